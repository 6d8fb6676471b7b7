"""The GPU check must be ready to run although no GPU is at hand: its --tiny mode runs on the CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_script_runs_tiny_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "time to 50% test accuracy" in done.stdout and "bf16+cl img/s" in done.stdout
