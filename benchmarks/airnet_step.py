"""One training step of airbench93's network, three ways, interleaved in one process: the peer's port with
its learned linear head (x 1/9), the port with fixedhead's fixed cosine head (S = 16), and fixedhead's own
`airnet` encoder with that head (optionally torch.compile'd). Batch 1,024 of random images, the peer's loss
(label smoothing 0.2, summed), Nesterov SGD; the stem frozen as after the peer's third epoch.

Question (issue 17): is a fixed cosine head dearer per step than the peer's linear one, and is our encoder
the peer's network at the peer's cost? With --muon-batch: what do smaller steps over the same images cost?
Times are medians over rounds that alternate the order, so the ratios share the machine's drift (about 10%
within an hour here).

    python benchmarks/airnet_step.py [--rounds 12] [--bf16 auto|on|off] [--compile] [--batch 1024]
                                     [--also airnet-small ...]   # more of fixedhead's encoders, same head
                                     [--muon]   # and airnet whose filters take Muon steps (train.optimizer muon)
                                     [--stem-bias]   # and (with --muon) that net while its stem's bias learns
                                     [--low-res 24]   # and (with --muon) those nets fed images of 24 px
                                                      # (data.low_res_size: progressive resizing's early epochs)
                                     [--muon-batch 512 256]   # and (with --muon) that net taking the same images
                                                              # in steps of 512, 256 (train.batch_size)

With --loader it times the other half of an epoch instead: one pass of augmentation over 50,000 random
uint8 images through fixedhead's BatchLoader (the recipe's settings: batch 1,024, 2-pixel reflect-padded
translations, alternating flips, channels-last) and through the port's Loader, interleaved, no network.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench93  # noqa: E402  (the peer, beside this file)

from fixedhead import ClassHead, Classifier, build_encoder  # noqa: E402
from fixedhead.config import TrainConfig  # noqa: E402
from fixedhead.devices import native_bf16  # noqa: E402
from fixedhead.models.classifier import ENCODERS  # noqa: E402
from fixedhead.optim import make_optimizer  # noqa: E402


def ours(compile_it: bool, arch: str = "airnet", stem_bias: bool = False) -> torch.nn.Module:
    encoder = build_encoder(arch, 3, 32)
    encoder.body[0].requires_grad_(False)
    encoder.body[0].bias.requires_grad_(stem_bias)  # learning: a step of the first model.whiten_bias_epochs
    net = Classifier(encoder, ClassHead(encoder.num_features, 10, "cosine", fixed=True, scale=16.0))
    net = net.to(memory_format=torch.channels_last)
    return torch.compile(net) if compile_it else net


def train_on(net, optimizer, images, labels, bf16: bool, split: int) -> float:
    """Seconds for `net` to train on `images` with the peer's loss, in optimizer steps of `split` images."""
    start = time.perf_counter()
    for batch, targets in zip(images.split(split), labels.split(split)):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits = net(batch)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.2, reduction="sum")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def peer(head: str) -> torch.nn.Module:
    net = airbench93.make_net(head)
    net[0].requires_grad_(False)
    return net


def time_loaders(rounds: int, count: int) -> dict:
    """Seconds of one augmented training epoch per round, for each loader; the first round is untimed (the
    port pads the whole set in its first epoch)."""
    from fixedhead.data.pipeline import BatchLoader

    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (count,))
    ours = BatchLoader(images, labels, 1024, airbench93.MEAN, airbench93.STD, shuffle=True, crop_padding=2,
                       flip=True, drop_last=True, channels_last=True, alternating_flip=True,
                       crop_padding_mode="reflect")
    port = airbench93.Loader(images, labels, 1024, train=True)
    passes = {"fixedhead BatchLoader": lambda e: sum(1 for _ in ours.epoch(0, e)),
              "the port's Loader": lambda e: sum(1 for _ in port)}
    times = {name: [] for name in passes}
    for r in range(rounds + 1):
        for name in (list(passes) if r % 2 == 0 else list(passes)[::-1]):
            start = time.perf_counter()
            passes[name](r)
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def report(times: dict, base: str, what: str) -> None:
    reference = statistics.median(times[base])
    for name, values in times.items():
        median = statistics.median(values)
        low, high = (min(values), max(values)) if len(values) < 4 else statistics.quantiles(values, n=4)[::2]
        print(f"{name:42s} median {median:.3f} s (quartiles {low:.3f}-{high:.3f}), {median / reference:.3f}x {what}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--compile", action="store_true", help="add fixedhead's airnet under torch.compile")
    parser.add_argument("--batch", type=int, default=1024, help="images per step (the peer's 1,024)")
    parser.add_argument("--also", nargs="+", default=[], metavar="ARCH", choices=sorted(ENCODERS),
                        help="more fixedhead encoders with the same head, e.g. airnet-small")
    parser.add_argument("--muon", action="store_true", help="add airnet with Muon for its filters (train.optimizer muon)")
    parser.add_argument("--stem-bias", action="store_true",
                        help="with --muon: add that net while its stem's bias learns (model.whiten_bias_epochs)")
    parser.add_argument("--low-res", type=int, metavar="SIDE",
                        help="with --muon: add the Muon nets fed images scaled down to SIDE px (data.low_res_size)")
    parser.add_argument("--muon-batch", type=int, nargs="+", default=[], metavar="B",
                        help="with --muon: add that net taking the --batch images in steps of B (B divides --batch)")
    parser.add_argument("--loader", action="store_true", help="time the two loaders' augmentation, not the step")
    parser.add_argument("--images", type=int, default=50_000, help="--loader: images per epoch")
    args = parser.parse_args()
    if args.stem_bias and not args.muon:
        parser.error("--stem-bias adds the Muon net with its stem's bias learning; give --muon with it")
    if args.low_res is not None and not (args.muon and 4 <= args.low_res < 32):
        parser.error("--low-res SIDE adds the Muon nets fed SIDE px images; give --muon with it, and 4 <= SIDE < 32")
    if args.muon_batch and not (args.muon and all(0 < b < args.batch and args.batch % b == 0 for b in args.muon_batch)):
        parser.error(f"--muon-batch B adds the Muon net taking the --batch images in steps of B; give --muon with it, "
                     f"and each B below {args.batch} and dividing it")
    if args.loader:
        print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"one epoch of {args.images:,} images, {args.rounds} interleaved rounds")
        return report(time_loaders(args.rounds, args.images), "the port's Loader", "the port's")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bf16(torch.device("cpu")))
    torch.manual_seed(0)
    nets = {"peer, linear head": peer("linear"), "peer, fixed cosine head": peer("cosine-fixed"),
            "fixedhead airnet, fixed cosine head": ours(False)}
    for arch in args.also:
        nets[f"fixedhead {arch}, fixed cosine head"] = ours(False, arch)
    if args.compile:
        nets["the same, torch.compile"] = ours(True)
    muon = "fixedhead airnet, Muon for the filters"
    muons = [muon] if args.muon else []
    if args.muon:
        nets[muon] = ours(False)
    if args.muon and args.stem_bias:
        muons.append(f"{muon}, stem bias learning")
        nets[muons[-1]] = ours(False, stem_bias=True)
    sides = dict.fromkeys(nets, 32)
    if args.low_res is not None:
        for name in list(muons):
            muons.append(f"{name}, {args.low_res} px")
            nets[muons[-1]], sides[muons[-1]] = ours(False, stem_bias="stem bias" in name), args.low_res
    splits = dict.fromkeys(nets, args.batch)  # images per optimizer step; a round shows each net --batch images
    for size in args.muon_batch:
        muons.append(f"{muon}, steps of {size}")
        nets[muons[-1]], sides[muons[-1]], splits[muons[-1]] = ours(False), 32, size
    images = {side: torch.randn(args.batch, 3, side, side).contiguous(memory_format=torch.channels_last)
              for side in set(sides.values())}
    labels = torch.randint(0, 10, (args.batch,))
    optimizers = {name: torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4, momentum=0.85,
                                        nesterov=True) for name, net in nets.items() if name not in muons}
    for name in muons:  # the recipe's optimizer: Muon for the filters, SGD for the batch-norm shifts
        optimizers[name] = make_optimizer(nets[name], TrainConfig(optimizer="muon", lr=1e-4, momentum=0.85,
                                                                  bn_bias_lr=64.0, batch_size=splits[name]))

    def step(name: str) -> float:
        return train_on(nets[name], optimizers[name], images[sides[name]], labels, bf16, splits[name])

    for name in nets:  # warm-up (and compilation) untimed
        step(name), step(name)
    times = {name: [] for name in nets}
    for r in range(args.rounds):
        for name in (list(nets) if r % 2 == 0 else list(nets)[::-1]):
            times[name].append(step(name))
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'bf16 autocast' if bf16 else 'float32'}, batch {args.batch:,}, {args.rounds} interleaved rounds")
    report(times, "peer, linear head", "the peer's")


if __name__ == "__main__":
    main()
