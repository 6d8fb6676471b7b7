"""How long the main job takes: `fixedhead demo` on the full Fashion-MNIST (where it is installed), wall
time of the whole command (training, analysis, report) in a fresh process, and with --baseline the same
demo at other settings (`--set` overrides, e.g. the earlier 3 epochs) in the same invocation, alternating
which goes first, so that the ratio shares the machine's hour.

--isa avx2 limits PyTorch's own kernels (ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA) to AVX2 on
a CPU that has AVX-512: a stand-in for a 2-core AVX2 machine at the same clock, not the same as one.

    python benchmarks/demo_time.py [--isa avx2] [--rounds 1] [--baseline train.epochs=3 train.warmup_epochs=1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ISA = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def timed_demo(sets: list[str], isa: str, folder: Path) -> float:
    command = [sys.executable, "-m", "fixedhead", "demo", "--out", str(folder), "--overwrite",
               *(item for s in sets for item in ("--set", s))]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, **ISA[isa]}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=tuple(ISA), default="native")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", nargs="+", metavar="KEY=VALUE", help="also time the demo with these overrides")
    args = parser.parse_args()
    sides = {"shipped": []} | ({"baseline": list(args.baseline)} if args.baseline else {})
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                seconds[side].append(timed_demo(sides[side], args.isa, Path(scratch) / side))
    result = {"machine": platform.processor() or platform.machine(), "isa": args.isa, "rounds": args.rounds,
              "seconds": {side: statistics.median(values) for side, values in seconds.items()}}
    if args.baseline:
        result["baseline"] = args.baseline
        result["shipped / baseline"] = statistics.median(s / b for s, b in zip(seconds["shipped"],
                                                                                   seconds["baseline"]))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
