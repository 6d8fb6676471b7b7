"""Very many classes: a learned head (float32 weight, full logits, gradient and momentum) vs fixed
heads with the blockwise cross-entropy (no (B, C) logits, no gradient or optimizer state for the
vectors): vectors kept in bf16, or not kept at all but regenerated block by block from the seed.
C = 10k, 100k, 1M (D = 512, B = 256).

Each setting runs in a fresh process: step time (median of the timed steps) and the peak memory of
the steps (CPU: resident VmHWM, reset once the head is built, so the one-off draw is not counted;
CUDA: peak allocated, reset likewise); the head's own stored bytes are shown in brackets.

    python benchmarks/many_classes.py [--classes 10000 100000 1000000] [--steps 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from fixedhead import ClassHead
from fixedhead.devices import resolve_device
from fixedhead.errors import UserError
from fixedhead.heads.many_classes import ManyClassHead

MODES = ("learned-float32", "fixed-bf16-blockwise", "fixed-regenerated-blockwise")


def one(mode: str, num_classes: int, steps: int, device: str, batch: int = 256, num_features: int = 512) -> dict:
    torch.manual_seed(0)
    fixed = mode != "learned-float32"
    bf16 = mode == "fixed-bf16-blockwise"
    head = (ManyClassHead(num_features, num_classes, "cosine", scale=16.0, vectors="bf16" if bf16 else "regenerate")
            if fixed else ClassHead(num_features, num_classes, "cosine", scale=16.0))
    head = head.to(device)
    params = list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9) if params else None
    # stands in for an encoder's output
    features = torch.randn(batch, num_features, device=device, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    head_bytes = sum(t.numel() * t.element_size() for t in [*head.parameters(), *head.buffers()])
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = head.loss_and_predictions(features, labels)[0]
        if optimizer:
            optimizer.zero_grad(set_to_none=True)
        features.grad = None
        loss.backward()
        if optimizer:
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))) / 1024
    return {"step_s": statistics.median(times[1:]), "peak_mib": peak_mib, "head_mib": head_bytes / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps, args.device)))
        return
    try:
        resolve_device(args.device)  # one line if this machine lacks it, before any worker starts
    except UserError as error:
        raise SystemExit(f"many_classes: {error}") from None
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device "
          f"{args.device}; cosine head, D=512, B=256. Per mode: s/step, ratio to learned, peak MiB (stored head MiB)")
    print(f"{'C':>9} " + " ".join(f"{mode:>36}" for mode in MODES))
    for num_classes in args.classes:
        cells, base = [], None
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(num_classes), "--steps", str(args.steps),
                                  "--device", args.device], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
            base = base or result  # the learned head, measured first
            cells.append(f"{result['step_s']:7.3f} s {result['step_s'] / base['step_s']:5.2f}x "
                         f"{result['peak_mib']:7.0f} ({result['head_mib']:.0f})")
        print(f"{num_classes:>9} " + " ".join(f"{cell:>36}" for cell in cells))


if __name__ == "__main__":
    main()
