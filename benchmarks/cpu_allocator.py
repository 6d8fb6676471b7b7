"""What keeping freed memory (fixedhead.devices.keep_freed_memory, which fit sets on the CPU) is worth: the
same work in fresh processes, glibc as it comes ("default") against freed memory kept ("kept"), the two
alternating round by round so that each ratio shares the hour (this machine drifts about 10% within one).

Question (issue 17): glibc hands each block over 32 MiB back to the OS when it is freed, so every step of a
batch of 1,024 images faults its activation pages in again. How much of a step, and of an epoch, is that?

    python benchmarks/cpu_allocator.py [--rounds 5] [--steps 10]   # one training step of two nets: the peer's
        # (airbench93's, its linear head) and fixedhead's airnet with a fixed cosine head, bf16 where native
    python benchmarks/cpu_allocator.py --data-dir DIR --epochs 2 [--rounds 2] [--recipe FILE]  # default: the 6-epoch
        # Muon recipe of benchmarks/experiments/speed/cpu-fast-muon6.yaml
        # the recipe through fixedhead's trainer for --epochs (warm-up 23% of them); the default side has
        # keep_freed_memory switched off

Reported per net: the median seconds per step (or the training time) on each side and kept / default, paired
by round: mean +/- std, n, 95% t-interval. The setting is process-wide and one-way, hence a process per side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIDES = ("default", "kept")


def step_times(steps: int, batch: int) -> dict:
    """Median seconds per training step of each net, in this process as it is set."""
    import torch

    from fixedhead.devices import native_bf16

    sys.path.insert(0, str(HERE))
    from airnet_step import ours, peer, train_on

    torch.manual_seed(0)
    nets = {"peer, linear head": peer("linear"), "fixedhead airnet, fixed cosine head": ours(False)}
    bf16 = native_bf16(torch.device("cpu"))
    images = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    optimizers = {name: torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.85,
                                        nesterov=True) for name, net in nets.items()}

    def step(name: str) -> float:
        return train_on(nets[name], optimizers[name], images, labels, bf16, batch)

    for name in nets:  # warm-up, untimed
        step(name), step(name)
    times = {name: [] for name in nets}
    for s in range(steps):
        for name in (list(nets) if s % 2 == 0 else list(nets)[::-1]):
            times[name].append(step(name))
    return {name: statistics.median(values) for name, values in times.items()}


def train_time(recipe: str, data_dir: str, epochs: float) -> dict:
    """The recipe's training time through fit for `epochs` (warm-up 23% of them), in this process as it is
    set; fit's own call to keep_freed_memory is switched off here so that the default side stays default."""
    import fixedhead.training.fit
    from fixedhead import fit
    from fixedhead.config import make_config

    sys.path.insert(0, str(HERE))
    from vs_airbench import recipe_config

    fixedhead.training.fit.keep_freed_memory = lambda: False  # the parent set this process's side before
    config = make_config({**recipe_config(recipe), "data.data_dir": data_dir, "seed": 0, "train.epochs": epochs,
                          "train.warmup_epochs": 0.23 * epochs})
    with tempfile.TemporaryDirectory() as folder:
        final = fit(config, Path(folder) / "run", verbose=False)
    return {"fixedhead trainer, " + Path(recipe).stem: final["train_time_s"]}


def child(args) -> None:
    """One side, in this fresh process: print {net: seconds} as JSON."""
    if args.child == "kept":
        from fixedhead.devices import keep_freed_memory

        if not keep_freed_memory():
            sys.exit("keep_freed_memory had no effect here (it needs Linux with glibc)")
    result = (train_time(args.recipe, args.data_dir, args.epochs) if args.epochs
              else step_times(args.steps, args.batch))
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per side, alternating which goes first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per net and process")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--epochs", type=float, help="time the recipe through fit for this many epochs instead")
    parser.add_argument("--data-dir", help="with --epochs: the CIFAR-10 JPEG folder (train/, test/)")
    parser.add_argument("--recipe", default=str(HERE / "experiments/speed/cpu-fast-muon6.yaml"))
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs is not None and not (args.epochs > 0 and args.data_dir):
        parser.error("--epochs E times the recipe through fit: give E > 0 and --data-dir DIR with it")
    if args.rounds < 1 or args.steps < 1 or args.batch < 1:
        parser.error("--rounds, --steps and --batch must be at least 1")
    if args.child:
        return child(args)
    command = [sys.executable, __file__, "--steps", str(args.steps), "--batch", str(args.batch), "--recipe", args.recipe]
    command += ["--epochs", str(args.epochs), "--data-dir", args.data_dir] if args.epochs else []
    seconds = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            done = subprocess.run([*command, "--child", side], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the {side} side failed: {done.stderr.strip().splitlines()[-1:]}")
            seconds[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {side}: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds[side][-1].items()),
                  flush=True)
    what = f"training time for {args.epochs:g} epochs" if args.epochs else f"seconds per step of {args.batch:,} images"
    sys.path.insert(0, str(HERE))
    from vs_airbench import summary

    print(f"{args.rounds} rounds, {what}; kept / default paired by round:")
    for name in seconds["default"][0]:
        ratios = [kept[name] / default[name] for default, kept in zip(seconds["default"], seconds["kept"])]
        medians = {side: statistics.median(s[name] for s in seconds[side]) for side in SIDES}
        print(f"{name:40s} default {medians['default']:.3f} s, kept {medians['kept']:.3f} s, kept / default "
              f"{summary(ratios)}")


if __name__ == "__main__":
    main()
