"""Sweeps on Ray and on Slurm (through submitit's local executor, since no Slurm exists here): the same
run folders and bit-identical results as the sequential sweep (one torch thread per run on both sides)."""

import json

import pytest
import torch
import yaml

from fixedhead.cli import main
from fixedhead.experiments.sweep import run_sweep

EXPERIMENT = {"name": "two", "base": {"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 1,
                                      "train.batch_size": 128},
              "variants": {"fixed": {"model.fixed": True}, "learned": {"model.fixed": False}}, "seeds": 1}
KEYS = ("test_acc", "test_loss", "train_losses", "train_loss_end", "status")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    (folder / "two.yaml").write_text(yaml.safe_dump(EXPERIMENT))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_sweep(folder / "two.yaml", folder / "sequential", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    assert len(summary["finished"]) == 2
    return folder


def _same(a, b) -> bool:
    runs = [r for r in b.iterdir() if (r / "final.json").exists()]
    read = lambda p: json.loads(p.read_text())
    return len(runs) == 2 and all(all(read(a / r.name / "final.json")[k] == read(r / "final.json")[k] for k in KEYS)
                                  for r in runs)


def test_a_sweep_on_ray_gives_the_sequential_results(sequential, capsys):
    pytest.importorskip("ray")
    out = sequential / "ray"
    assert main(["sweep", str(sequential / "two.yaml"), "--out", str(out), "--on", "ray", "--cpus-per-run", "1"]) == 0
    assert "2 runs: 2 trained" in capsys.readouterr().out
    assert _same(out, sequential / "sequential")
    assert main(["sweep", str(sequential / "two.yaml"), "--out", str(out), "--on", "ray"]) == 0  # all kept, none rerun
    assert "2 already finished" in capsys.readouterr().out


def test_a_sweep_as_a_job_array_gives_the_sequential_results(sequential):
    pytest.importorskip("submitit")
    from fixedhead.experiments.cluster import run_on_slurm

    out = sequential / "slurm"
    summary = run_on_slurm(sequential / "two.yaml", out, cluster="local", log=lambda m: None)
    assert sorted(summary["finished"]) == sorted(summary["planned"]) and len(summary["jobs"]) == 2
    assert _same(out, sequential / "sequential")


def test_cluster_flags_that_contradict_are_one_line(sequential, capsys):
    for argv in (["--on", "ray", "--devices", "cpu,cpu"], ["--on", "slurm", "--shard", "1/2"]):
        assert main(["sweep", str(sequential / "two.yaml"), "--out", str(sequential / "x"), *argv]) == 2
        assert "schedules every run itself" in capsys.readouterr().err
    assert main(["sweep", str(sequential / "two.yaml"), "--out", str(sequential / "x"), "--on", "ray", "--dry-run",
                 "--cpus-per-run", "4", "--gpus-per-run", "1"]) == 0
    assert "2 runs planned; each a ray task of 4 CPU(s), 1.0 GPU(s)" in capsys.readouterr().out


def test_a_ray_worker_killed_mid_run_is_retried_and_the_run_ends_as_if_never_killed(sequential, tmp_path):
    """kill -9 of the Ray worker training a run, after its first epoch's checkpoint: Ray retries the task,
    the run resumes from its checkpoint, and its final.json is the uninterrupted run's."""
    pytest.importorskip("ray")
    import os
    import signal
    import subprocess
    import sys
    import time

    # 10 epochs of about half a second: a kill delayed by a loaded machine still lands before the run ends
    experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "train.epochs": 10, "train.batch_size": 16},
                  "variants": {"fixed": {"model.fixed": True}}}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(experiment))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_sweep(tmp_path / "one.yaml", tmp_path / "straight", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "ray"
    sweep = subprocess.Popen([sys.executable, "-m", "fixedhead", "sweep", str(tmp_path / "one.yaml"), "--out", str(out),
                              "--on", "ray", "--retries", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (run,) = [p.name for p in (tmp_path / "straight").iterdir() if p.is_dir()]
    checkpoint = out / run / "checkpoint.pt"  # written (atomically) after each epoch: what a retry resumes from
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.05)
    workers = [pid for pid in _pids() if b"train_planned_run" in _cmdline(pid)]
    if not workers:
        sweep.kill()
        pytest.skip("no Ray worker process found to kill (its title is set by Ray on Linux)")
    assert not (out / run / "final.json").exists(), "the run ended before the kill: nothing left to resume"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr[-2000:]
    read = lambda path: json.loads(path.read_text())
    assert all(read(out / run / "final.json")[k] == read(tmp_path / "straight" / run / "final.json")[k] for k in KEYS)
    assert len(read(out / run / "meta.json").get("resumed", [])) >= 1  # it did resume, not start again


def _pids() -> list[int]:
    from pathlib import Path

    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()] if Path("/proc").exists() else []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:  # gone meanwhile, or not ours to read
        return b""
