"""How close a training step comes to the machine's limit: the floating-point operations of one training
step (forward and backward, counted by torch.utils.flop_counter) of fixedhead's airnet with a fixed cosine
head and of the airbench93 port's network, its measured time, and the fraction of the machine's practical
peak that makes: the peak of a large square matmul in float32, and in bf16 where the CPU has it natively.

    python benchmarks/machine_limit.py [--batch 512] [--rounds 5] [--bf16 auto|on|off] [--size 2048]

Reported per net: GFLOP per step, the median seconds per step, the GFLOP/s reached, and that as a fraction of
the peak in the step's precision. The matmul and the steps alternate round by round, so they share the
machine's drift. A low fraction says the step is bound by something else than arithmetic: memory traffic
of small convolutions and batch norm, layout conversions, or the Python side.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench93  # noqa: E402  (the peer, beside this file)

from fixedhead import ClassHead, Classifier, build_encoder  # noqa: E402
from fixedhead.devices import native_bf16  # noqa: E402


def _nets() -> dict:
    encoder = build_encoder("airnet", 3, 32)
    ours = Classifier(encoder, ClassHead(encoder.num_features, 10, "cosine", fixed=True, scale=16.0))
    peer = airbench93.make_net()
    return {"airnet + fixed cosine": ours.to(memory_format=torch.channels_last),
            "airbench93 port": peer.to(memory_format=torch.channels_last)}


def _step(net, images, labels, bf16: bool) -> None:
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(net(images), labels, label_smoothing=0.2)
    loss.backward()
    net.zero_grad(set_to_none=True)


def _flops(net, images, labels, bf16: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        _step(net, images, labels, bf16)
    return counter.get_total_flops()


def _matmul_rate(size: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * size**3 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--size", type=int, default=2048, help="side of the square matmul that measures the peak")
    args = parser.parse_args()
    bf16 = native_bf16(torch.device("cpu")) if args.bf16 == "auto" else args.bf16 == "on"
    dtype = torch.bfloat16 if bf16 else torch.float32
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch,))
    nets = _nets()
    flops = {name: _flops(net, images, labels, bf16) for name, net in nets.items()}
    seconds = {name: [] for name in nets}
    peaks = []
    for _ in range(args.rounds):
        peaks.append(_matmul_rate(args.size, dtype))
        for name, net in nets.items():
            _step(net, images, labels, bf16)  # warm
            start = time.perf_counter()
            _step(net, images, labels, bf16)
            seconds[name].append(time.perf_counter() - start)
    peak = statistics.median(peaks)
    rows = {name: {"gflop_per_step": flops[name] / 1e9, "seconds_per_step": statistics.median(seconds[name]),
                   "gflops_reached": flops[name] / statistics.median(seconds[name]) / 1e9,
                   "fraction_of_peak": flops[name] / statistics.median(seconds[name]) / peak} for name in nets}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "precision": "bf16" if bf16 else "float32", "batch": args.batch,
                      "peak_gflops_matmul": peak / 1e9, "nets": rows}, indent=1))


if __name__ == "__main__":
    main()
