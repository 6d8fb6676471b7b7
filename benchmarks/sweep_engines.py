"""What a sweep gains on Ray on one machine: the smoke sweep's wall time as Ray tasks (a local Ray cluster,
`--per-run` threads each, as many at a time as the cores allow) against the sequential sweep (all the
cores' threads for each run), both in fresh processes, alternating which goes first round by round.

    python benchmarks/sweep_engines.py [--rounds 3] [--experiment smoke/pipeline]

Reported: each side's wall seconds per round, and sequential / ray per round: mean +/- std, n, 95% t-interval
(paired by round). Ray's own start-up (a local cluster each time) is inside its time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from scipy import stats


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--experiment", default="smoke/pipeline")
    parser.add_argument("--per-run", type=int, default=1, help="threads of each Ray task")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    times = {"sequential": [], "ray": []}
    for round_ in range(args.rounds):
        order = ("sequential", "ray") if round_ % 2 == 0 else ("ray", "sequential")
        for side in order:
            with tempfile.TemporaryDirectory() as out:
                command = [sys.executable, "-m", "fixedhead", "sweep", args.experiment, "--out", out]
                env = dict(os.environ, OMP_NUM_THREADS=str(cores))
                if side == "ray":
                    command += ["--on", "ray", "--cpus-per-run", str(args.per_run)]
                    env["OMP_NUM_THREADS"] = str(args.per_run)
                times[side].append(_timed(command, env))
        print(json.dumps({side: round(t[-1], 2) for side, t in times.items()}), flush=True)
    ratio = [s / r for s, r in zip(times["sequential"], times["ray"])]
    low, high = (stats.t.interval(0.95, len(ratio) - 1, statistics.mean(ratio), stats.sem(ratio))
                 if len(ratio) > 1 else (float("nan"),) * 2)
    print(json.dumps({"cores": cores, "experiment": args.experiment, "seconds": times,
                      "sequential_over_ray": {"mean": statistics.mean(ratio),
                                              "std": statistics.stdev(ratio) if len(ratio) > 1 else None,
                                              "n": len(ratio), "ci95": [low, high]}}, indent=1))


if __name__ == "__main__":
    main()
