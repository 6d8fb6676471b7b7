"""fixedhead's CPU speed recipe against a peer, airbench93 (benchmarks/airbench93.py, the default) or
airbench94_muon (benchmarks/airbench94_muon.py, --peer airbench94_muon), side by side in one
invocation: seed by seed, the peer and ours back to back (the peer first on even seeds, ours first on odd
ones), on the same machine and data, so that every time is a
ratio against a run made minutes apart (this machine's speed drifts by about 10% within an hour).

Headline: training seconds until the test accuracy with test-time augmentation first reaches each target
(88% and 89% by default; evaluations are not timed), ours / peer, and the final accuracies, n = seeds,
mean +/- std and a 95% t-interval. With --overhead the two sides train the *same* network and
hyperparameters (the peer's, with a fixed cosine head S = 16 on both), once through the bare port and once
through `fixedhead`'s trainer, and the ratio of seconds per epoch is the trainer's overhead.

    python benchmarks/vs_airbench.py --data-dir /tmp/cifar --seeds 3
    python benchmarks/vs_airbench.py --data-dir /tmp/cifar --seeds 3 --peer airbench94_muon --recipe speed/cpu-fast-long
    python benchmarks/vs_airbench.py --data-dir /tmp/cifar --seeds 2 --overhead --epochs 2
    python benchmarks/vs_airbench.py --tiny [--overhead]   # 6,144 noise images, 1 epoch: checks the script

A float32 CPU pair takes over an hour, so three seeds outlast one sitting: with --out DIR each finished pair
(the peer and ours, trained back to back) is kept as DIR/seed-N.json and a later invocation with the same
setup skips it; an interrupted pair is trained again whole, so the two times of a pair always share the hour.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench93  # noqa: E402  (the peers, beside this file)
import airbench94_muon  # noqa: E402

from fixedhead import fit  # noqa: E402
from fixedhead.config import flat, flatten, make_config, parse_overrides  # noqa: E402
from fixedhead.data import load  # noqa: E402
from fixedhead.devices import keep_freed_memory, native_bf16  # noqa: E402
from fixedhead.errors import UserError  # noqa: E402
from fixedhead.experiments.experiment_file import recipe  # noqa: E402
from fixedhead.experiments.statistics import mean_ci, summarise  # noqa: E402
from fixedhead.files import check_fields, read_json, write_json  # noqa: E402

# Which side trains first, by seed parity: the first run of a process pays one-time costs (measured: the peer
# took 409 s first and 360 s second for the same 2 epochs), so alternating cancels them over an even n.
FIRST = (("peer", "ours"), ("ours", "peer"))
PEERS = {"airbench93": airbench93, "airbench94_muon": airbench94_muon}

# The peer's network and hyperparameters in fixedhead's keys (for --overhead); epochs set by --epochs.
PEER_AS_CONFIG = {
    "data.name": "imagefolder", "data.crop_padding": 2, "data.alternating_flip": True, "model.arch": "airnet",
    "model.whiten": "frozen", "model.similarity": "cosine", "model.fixed": True, "model.scale": 16.0,
    "train.batch_size": 1024, "train.decoupled": True, "train.lr": 11.5, "train.momentum": 0.85,
    "train.weight_decay": 0.0153, "train.bn_bias_lr": 64.0, "train.label_smoothing": 0.2, "train.final_lr": 0.07,
    "train.lookahead": 5, "train.channels_last": True, "train.tta": "none",
    "model.whiten_bias_epochs": 3, "train.warmup_start": 0.2, "data.crop_padding_mode": "reflect",
}


recipe_config = recipe  # the one run an experiment file describes (fixedhead.experiments.experiment_file)


def ours(overrides: dict, data_dir: str, seed: int, folder: Path) -> dict:
    config = make_config({**overrides, "data.data_dir": data_dir, "seed": seed, "train.log_test": True})
    final = fit(config, folder / f"ours-{seed}", verbose=False)
    history, elapsed = [], 0.0
    for line in (folder / f"ours-{seed}" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        elapsed += record["epoch_time_s"]
        history.append({"epoch": record["epoch"], "train_time_s": elapsed, "test_acc_tta": record["test_acc"]})
    return {"test_acc_tta": final["test_acc"], "train_time_s": final["train_time_s"], "history": history,
            "epochs": final["epochs"]}


def tiny_folder(root: Path) -> str:
    """10 classes of 32 px noise tinted by class (6,144 training, 200 test images: 6 steps
    of 1,024, so that lookahead syncs before the end): checks the script only."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6144), ("test", 200)):
        for i in range(count):
            label = i % 10
            tint = np.array([label * 25, 255 - label * 25, (label * 70) % 256], np.float64)
            pixels = np.clip(0.5 * tint + 0.5 * rng.uniform(0, 255, (32, 32, 3)), 0, 255).astype(np.uint8)
            (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / split / f"c{label}" / f"{i}.png")
    return str(root)


def typed(overrides: dict, data_dir: str) -> dict:
    """The overrides as the trainer reads them (`--set train.muon_lr=0.16` is the number 0.16, as in a recipe
    file), checked before anything trains: a bad key or value is one line now, not after the peer's run."""
    values = flat(make_config({**overrides, "data.data_dir": data_dir}))
    return {key: values[key] for key in flatten(overrides)}


def kept_pair(out: Path | None, seed: int, setup: dict) -> tuple | None:
    """The (peer, ours) results of `seed` kept in `out` by an earlier invocation with the same setup, or None."""
    path = out / f"seed-{seed}.json" if out else None
    if path is None or not path.exists():
        return None
    record = check_fields(read_json(path, "kept pair"), {"setup": dict, "peer": dict, "ours": dict}, path)
    if record["setup"] != setup:
        raise UserError(f"{path} was measured with another setup (recipe, --set, --overhead, --epochs or --bf16); "
                        "use another --out or delete it")
    return record["peer"], record["ours"]


def first_time(history: list, target: float):
    return next((h["train_time_s"] for h in history if h["test_acc_tta"] >= target), None)


def summary(values: list) -> str:
    """mean +/- std and a 95% t-interval of the values that exist; seeds without one (a target not reached)
    are counted in the line, not dropped from it silently."""
    reached = [v for v in values if v is not None]
    missing = f"; not reached in {len(values) - len(reached)} of {len(values)} seeds" if len(reached) < len(values) else ""
    if not reached:
        return "not reached"
    if len(reached) == 1:
        return f"{reached[0]:.4g} (n = 1{missing})"
    cell = summarise(reached)
    mean, low, high = mean_ci(cell)
    return f"{mean:.4g} +/- {cell['std']:.2g} (n = {len(reached)}, 95% CI {low:.4g} .. {high:.4g}{missing})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the CIFAR-10 JPEG folder (train/, test/)")
    parser.add_argument("--recipe", default="configs/speed/cpu-fast.yaml")
    parser.add_argument("--peer", choices=tuple(PEERS), default="airbench93")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.88, 0.89])
    parser.add_argument("--overhead", action="store_true", help="same network and hyperparameters on both sides")
    parser.add_argument("--epochs", type=int, help="--overhead only (default: the peer's)")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="both sides: bf16 autocast (auto: where the CPU has bf16 instructions)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--tiny", action="store_true", help="6,144 noise images, 1 epoch: checks the script")
    parser.add_argument("--out", type=Path, help="keep each finished seed's pair here; a rerun skips kept seeds")
    args = parser.parse_args()
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16(torch.device("cpu")))
    peer_module = PEERS[args.peer]
    if args.overhead and args.peer != "airbench93":
        raise UserError("--overhead trains airbench93's network on both sides; leave --peer at airbench93")
    if args.tiny:
        args.data_dir, args.epochs, args.seeds = tiny_folder(Path(tempfile.mkdtemp())), 1, 1
    args.epochs = args.epochs or peer_module.HYP["epochs"]
    if args.overhead:
        overrides = {**PEER_AS_CONFIG, "train.epochs": args.epochs, "train.warmup_epochs": 0.23 * args.epochs}
        peer_head = "cosine-fixed"
    else:
        overrides, peer_head = recipe_config(args.recipe), "linear"
    peer_epochs = args.epochs if args.overhead or args.tiny else peer_module.HYP["epochs"]
    if args.tiny:
        overrides["train.epochs"] = args.epochs
    overrides.update(parse_overrides(args.set))
    overrides["train.bf16"] = bf16
    overrides = typed(overrides, args.data_dir)
    # fit keeps freed memory on the CPU for the whole process (about 8% of an epoch, cpu_allocator.py); set
    # here, before either side trains, the peer runs under the same allocator as ours from its first seed on.
    memory_kept = keep_freed_memory()
    train_set, test_set = load("imagefolder", args.data_dir, "train"), load("imagefolder", args.data_dir, "test")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'bf16 autocast' if bf16 else 'float32'}; {len(train_set)} training images; freed memory "
          f"{'kept for reuse (glibc)' if memory_kept else 'left to the C library'} on both sides", flush=True)
    setup = {"overrides": {k: v for k, v in overrides.items() if k != "data.data_dir"}, "peer": args.peer,
             "peer_head": peer_head,
             "peer_epochs": peer_epochs, "overhead": args.overhead, "train_images": len(train_set),
             "freed_memory_kept": memory_kept}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            kept = kept_pair(args.out, seed, setup)
            if kept:
                peer, mine = kept
            else:
                sides = {"peer": functools.partial(peer_module.train, train_set, test_set, seed, peer_head, 16.0, bf16,
                                                   peer_epochs, every_epoch=not args.overhead),
                         "ours": functools.partial(ours, overrides, args.data_dir, seed, Path(scratch))}
                order = FIRST[seed % 2]
                done = {side: sides[side]() for side in order}
                peer, mine = done["peer"], done["ours"]
                if args.out:
                    write_json(args.out / f"seed-{seed}.json",
                               {"setup": setup, "seed": seed, "first": order[0], "peer": peer, "ours": mine})
            rows.append((peer, mine))
            print(json.dumps({"seed": seed, "kept": bool(kept), "peer": {k: v for k, v in peer.items() if k != "history"},
                              "ours": {k: v for k, v in mine.items() if k != "history"}}), flush=True)
    if args.overhead:
        ratios = [(m["train_time_s"] / m["epochs"]) / (p["train_time_s"] / p["epochs"]) for p, m in rows]
        print(f"seconds per epoch, peer: {summary([p['train_time_s'] / p['epochs'] for p, _ in rows])}")
        print(f"seconds per epoch, fixedhead: {summary([m['train_time_s'] / m['epochs'] for _, m in rows])}")
        print(f"fixedhead / peer: {summary(ratios)}")
        return
    ours_name = " ".join([args.recipe, *args.set])  # the recipe with what --set changed in it
    for side, index in ((f"peer ({args.peer}, learned head)", 0), (f"ours ({ours_name})", 1)):
        runs = [r[index] for r in rows]
        print(f"{side}: TTA test accuracy {summary([r['test_acc_tta'] for r in runs])}; "
              f"training s {summary([r['train_time_s'] for r in runs])}")
    for target in args.targets:
        times = [(first_time(p["history"], target), first_time(m["history"], target)) for p, m in rows]
        ratios = [m / p if p is not None and m is not None else None for p, m in times]
        print(f"to {target:.0%}: peer {summary([p for p, _ in times])} s, ours {summary([m for _, m in times])} s, "
              f"ours / peer {summary(ratios)}")


if __name__ == "__main__":
    try:
        main()
    except UserError as error:  # bad input: one line, exit 2, as fixedhead's own commands
        print(f"vs_airbench: error: {error}", file=sys.stderr)
        sys.exit(2)
