"""Benchmark scripts stay runnable although no GPU or real data is at hand: their --tiny modes run on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _refused_in_process(script: str, argv: list, monkeypatch, capsys) -> str:
    """Run a benchmark script's command line in this process (no second torch import): its refusal must be
    exit 2 with one line on stderr and no traceback. Returns that line."""
    import runpy

    monkeypatch.setattr(sys, "argv", [script, *argv])
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(script, run_name="__main__")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err and err.strip(), err
    return err


@pytest.mark.slow
def test_gpu_check_script_runs_tiny_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "time to 50% test accuracy" in done.stdout and "bf16+cl img/s" in done.stdout


def test_recipe_on_validation_scores_one_training_run_under_each_tta():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recipe_on_validation.py"), "--tiny"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["val_acc"]) == {"none", "shift"} and result["epochs"] == 2
    assert all(0.5 < acc <= 1 for acc in result["val_acc"].values())  # 10 digits: chance is 0.1


def test_airnet_step_times_the_peers_net_and_ours_in_one_process(monkeypatch, capsys):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "airnet_step.py"), "--batch", "16", "--rounds", "2",
                           "--also", "airnet-small", "--muon", "--stem-bias", "--low-res", "24", "--muon-batch", "8"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if "x the peer's" in line]
    assert len(rows) == 9 and rows[0].rstrip().endswith("1.000x the peer's") and "airnet-small" in rows[3]
    assert "Muon for the filters" in rows[4] and "stem bias learning" in rows[5]
    assert "24 px" in rows[6] and "stem bias learning, 24 px" in rows[7] and "steps of 8" in rows[8]
    for alone in (["--stem-bias"], ["--low-res", "24"], ["--muon-batch", "512"], ["--muon", "--muon-batch", "300"]):
        assert "--muon" in _refused_in_process(str(REPO / "benchmarks" / "airnet_step.py"), alone, monkeypatch,
                                               capsys)  # not ignored
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "airnet_step.py"), "--loader", "--images", "3072",
                           "--rounds", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if "x the port's" in line]
    assert len(rows) == 2 and rows[1].startswith("the port's Loader") and rows[1].rstrip().endswith("1.000x the port's")


@pytest.mark.skipif(sys.platform != "linux", reason="keep_freed_memory acts on glibc only")
def test_cpu_allocator_times_each_side_in_a_process_of_its_own(monkeypatch, capsys):
    script = str(REPO / "benchmarks" / "cpu_allocator.py")
    done = subprocess.run([sys.executable, script, "--batch", "16", "--rounds", "2", "--steps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["round 1 default", "round 1 kept", "round 2 kept",
                                                          "round 2 default"]  # alternating which goes first
    rows = [line for line in lines if "kept / default" in line and "(n = 2," in line]
    assert len(rows) == 2 and rows[0].startswith("peer, linear head") and rows[1].startswith("fixedhead airnet")
    assert "--data-dir" in _refused_in_process(script, ["--epochs", "1"], monkeypatch, capsys)


def test_machine_limit_counts_a_steps_flops_as_torch_does_and_reports_the_fraction():
    """The FLOPs are torch.utils.flop_counter's; here checked to scale with the batch (a step is linear in
    it) and to give a fraction of the matmul peak between 0 and 1.5 (a tiny step runs far from it)."""
    runs = [json.loads(subprocess.run([sys.executable, str(REPO / "benchmarks" / "machine_limit.py"), "--batch", str(b),
                                       "--rounds", "1", "--size", "256", "--bf16", "off"],
                                      capture_output=True, text=True, timeout=600, check=True).stdout) for b in (4, 8)]
    for name in runs[0]["nets"]:
        small, large = (r["nets"][name]["gflop_per_step"] for r in runs)
        assert large == pytest.approx(2 * small, rel=1e-3)
        assert 0 < runs[1]["nets"][name]["fraction_of_peak"] < 1.5
