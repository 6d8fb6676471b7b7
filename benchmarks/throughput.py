"""Training-step throughput of each encoder (images/s): fp32 vs bf16 autocast + channels_last, compile optional.

Claim: bf16 + channels_last is at least 1.8x the fp32 step of the same encoder on this CPU (it has
AVX-512 BF16); the ratio is measured in the same run, the two settings interleaved.

    python benchmarks/throughput.py [--encoders fastnet resnet18] [--batch 128] [--size 32] [--compile] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from fixedhead import ClassHead, Classifier, build_encoder
from fixedhead.evaluate import autocast, resolve_device


def make_step(name: str, bf16: bool, channels_last: bool, compile_: bool, batch: int, size: int, device):
    torch.manual_seed(0)
    encoder = build_encoder(name, image_size=size)
    model = Classifier(encoder, ClassHead(encoder.num_features, 10, "cosine", fixed=True)).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    step_model = torch.compile(model) if compile_ else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with autocast(device, bf16):
            loss = F.cross_entropy(step_model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["fastnet-small", "fastnet", "resnet20", "resnet18"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, device {device}, "
          f"torch {torch.__version__}; batch {args.batch}, {args.size}x{args.size}")
    print(f"{'encoder':14} {'fp32 img/s':>11} {'bf16+cl img/s':>14} {'ratio':>6}")
    for name in args.encoders:
        steps = {mode: make_step(name, mode, mode, args.compile, args.batch, args.size, device) for mode in (False, True)}
        times = {False: [], True: []}
        for step in steps.values():
            step()
            step()  # warm-up (and compilation)
        for _ in range(args.steps):
            for mode, step in steps.items():  # interleaved: both see the same machine noise
                start = time.perf_counter()
                step()
                times[mode].append(time.perf_counter() - start)
        rate = {mode: args.batch / statistics.median(t) for mode, t in times.items()}
        print(f"{name:14} {rate[False]:>11.0f} {rate[True]:>14.0f} {rate[True] / rate[False]:>6.2f}")


if __name__ == "__main__":
    main()
