"""Training-step cost of a fixed vs a learned ClassHead, dot and cosine, at C = 10 ... 100,000 (D = 512).

Claim: a fixed head is never slower than a learned one, and needs less memory: its class vectors
carry no gradient and no momentum buffer, and its rows need no normalisation in the cosine head.

One step = head forward on (B, D) features, cross-entropy, backward to the features (as an encoder
would need), SGD with momentum and weight decay. Times are medians of interleaved repeats, so the
fixed/learned ratio is measured in the same run under the same machine noise.

    python benchmarks/head_cost.py            # B = 256, C in 10 100 1000 100000
    python benchmarks/head_cost.py --quick    # fewer repeats
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from fixedhead import ClassHead


def make_step(similarity: str, fixed: bool, num_classes: int, num_features: int, batch: int):
    head = ClassHead(num_features, num_classes, similarity, fixed=fixed)
    params = list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4) if params else None
    features = torch.randn(batch, num_features, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))

    def step():
        loss = F.cross_entropy(head(features), labels)
        if optimizer:
            optimizer.zero_grad(set_to_none=True)
        features.grad = None
        loss.backward()
        if optimizer:
            optimizer.step()

    return step


def state_bytes(similarity: str, fixed: bool, num_classes: int, num_features: int, batch: int) -> int:
    """Bytes held after a step beyond the head itself: gradients plus optimizer state (tracked exactly)."""
    head = ClassHead(num_features, num_classes, similarity, fixed=fixed)
    params = list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9) if params else None
    features = torch.randn(batch, num_features, requires_grad=True)  # as an encoder's output would
    loss = F.cross_entropy(head(features), torch.randint(0, num_classes, (batch,)))
    loss.backward()
    if optimizer:
        optimizer.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    momentum = sum(s["momentum_buffer"].numel() * 4 for s in (optimizer.state.values() if optimizer else []))
    return grads + momentum


def time_pair(similarity: str, num_classes: int, num_features: int, batch: int, repeats: int) -> dict:
    steps = {fixed: make_step(similarity, fixed, num_classes, num_features, batch) for fixed in (False, True)}
    for step in steps.values():
        step()  # warm-up
    times = {False: [], True: []}
    for _ in range(repeats):
        for fixed, step in steps.items():  # interleaved: both see the same noise
            start = time.perf_counter()
            step()
            times[fixed].append(time.perf_counter() - start)
    return {fixed: statistics.median(t) for fixed, t in times.items()}


def peak_rss_mib(similarity: str, fixed: bool, num_classes: int, num_features: int, batch: int) -> float:
    """Peak resident memory of three steps in a fresh process (the high-water mark is reset after the head
    is built, so the one-off cost of drawing the vectors is not counted)."""
    # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's high-water mark.
    code = (f"from head_cost import make_step; "
            f"s = make_step({similarity!r}, {fixed}, {num_classes}, {num_features}, {batch}); "
            f"open('/proc/self/clear_refs', 'w').write('5'); [s() for _ in range(3)]; "
            f"print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__file__.rpartition("/")[0] or ".")
    return int(out.stdout.strip()) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000, 100_000])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; B={args.batch}, D={args.features}")
    print(f"{'head':8} {'C':>8} {'learned ms':>11} {'fixed ms':>9} {'fixed/learned':>14} "
          f"{'grad+momentum MiB learned/fixed':>32} {'peak RSS MiB learned/fixed':>27}")
    for similarity in ("dot", "cosine"):
        for num_classes in args.classes:
            repeats = 5 if args.quick or num_classes >= 100_000 else 30
            t = time_pair(similarity, num_classes, args.features, args.batch, repeats)
            extra = [state_bytes(similarity, f, num_classes, args.features, args.batch) / 2**20 for f in (False, True)]
            peak = [peak_rss_mib(similarity, f, num_classes, args.features, args.batch) for f in (False, True)]
            print(f"{similarity:8} {num_classes:>8} {t[False] * 1e3:>11.3f} {t[True] * 1e3:>9.3f} "
                  f"{t[True] / t[False]:>14.2f} {extra[0]:>22.1f} / {extra[1]:<7.1f} {peak[0]:>18.0f} / {peak[1]:<6.0f}")


if __name__ == "__main__":
    main()
