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
