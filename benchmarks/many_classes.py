"""Very many classes: a learned head (float32 weight, full logits, gradient and momentum) vs a fixed
head kept in bf16 with the blockwise cross-entropy (no (B, C) logits, no gradient or optimizer state
for the vectors), at C = 10k, 100k, 1M (D = 512, B = 256).

Each setting runs in a fresh process: step time (median of the timed steps) and the peak resident
memory of the steps (VmHWM, reset once the head is built, so the one-off draw is not counted; the
head's own bytes are shown separately).

    python benchmarks/many_classes.py [--classes 10000 100000 1000000] [--steps 2]
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
import torch.nn.functional as F

from fixedhead import ClassHead


def one(mode: str, num_classes: int, steps: int, batch: int = 256, num_features: int = 512) -> dict:
    torch.manual_seed(0)
    fixed = mode == "fixed-bf16-blockwise"
    head = ClassHead(num_features, num_classes, "cosine", fixed=fixed, scale=16.0,
                     weight_dtype=torch.bfloat16 if fixed else None)
    params = list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9) if params else None
    features = torch.randn(batch, num_features, requires_grad=True)  # stands in for an encoder's output
    labels = torch.randint(0, num_classes, (batch,))
    head_bytes = sum(t.numel() * t.element_size() for t in [*head.parameters(), *head.buffers()])
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = head.blockwise_loss(features, labels) if fixed else F.cross_entropy(head(features), labels)
        if optimizer:
            optimizer.zero_grad(set_to_none=True)
        features.grad = None
        loss.backward()
        if optimizer:
            optimizer.step()
        times.append(time.perf_counter() - start)
    peak_kib = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
    return {"step_s": statistics.median(times[1:]), "peak_mib": peak_kib / 1024, "head_mib": head_bytes / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.steps)))
        return
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          "cosine head, D=512, B=256")
    print(f"{'C':>9} {'learned s/step':>15} {'fixed s/step':>13} {'ratio':>6} {'learned MiB (head)':>19} "
          f"{'fixed MiB (head)':>17}")
    for num_classes in args.classes:
        result = {}
        for mode in ("learned-float32", "fixed-bf16-blockwise"):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(num_classes), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            result[mode] = json.loads(out.stdout)
        a, b = result["learned-float32"], result["fixed-bf16-blockwise"]
        print(f"{num_classes:>9} {a['step_s']:>15.3f} {b['step_s']:>13.3f} {b['step_s'] / a['step_s']:>6.2f} "
              f"{a['peak_mib']:>11.0f} ({a['head_mib']:.0f}) {b['peak_mib']:>10.0f} ({b['head_mib']:.0f})")


if __name__ == "__main__":
    main()
