"""torchrun with 2 CPU processes (gloo) against a single process with the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from interrupts import same_result, wait_for

ARGS = ["train", "--data", "digits", "--arch", "fastnet-small", "--similarity", "cosine", "--fixed", "--epochs", "3",
        "--batch-size", "64", "--lr", "0.05", "--quiet"]


def test_two_processes_match_one(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, "-m", "fixedhead", *ARGS, "--out", str(single)], check=True, timeout=300)
    verbose = [a for a in ARGS if a != "--quiet"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", "-m", "fixedhead", *verbose, "--out", str(ddp)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test accuracy") == 1  # only rank 0 prints: the result and each epoch's line
    assert [done.stderr.count(f"epoch {e}/3 ") for e in (1, 2, 3)] == [1, 1, 1], done.stderr[-2000:]
    a, b = (torch.load(p / "model.pt", weights_only=True)["model"] for p in (single, ddp))
    assert torch.equal(a["head.weight"], b["head.weight"])  # the same class vectors, drawn from the seed
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # written once, by rank 0
    assert not [p.name for p in ddp.iterdir() if p.name.startswith(".")]  # no stray temporary files
    fa, fb = (json.loads((p / "final.json").read_text()) for p in (single, ddp))
    # Same data order, augmentation, global batch and averaged gradients; only batch-norm statistics
    # differ (each process normalises its 32 images, the single process all 64), so the runs drift
    # apart slightly: on 540 test images, 5 points is about 27 images.
    assert abs(fa["test_acc"] - fb["test_acc"]) <= 0.05
    assert fb["test_acc"] > 0.8


def test_batch_must_split_evenly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29518", "-m", "fixedhead", *ARGS[:-5], "--batch-size", "63", "--quiet",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "must be a multiple of the 2 processes" in done.stderr


def test_sync_bn_on_cpu_is_refused(tmp_path, capsys):
    from fixedhead.cli import main

    assert main([*ARGS, "--sync-bn", "--out", str(tmp_path / "r")]) == 2
    assert "sync_bn needs CUDA" in capsys.readouterr().err
    pytest.importorskip("torch.distributed")


DDP_ARGS = ["train", "--data", "digits", "--arch", "fastnet-small", "--epochs", "4", "--batch-size", "64", "--lr", "0.05",
            "--quiet"]


def _torchrun(port: int, out, *extra) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
            "-m", "fixedhead", *DDP_ARGS, "--out", str(out), *extra]


@pytest.fixture(scope="module")
def ddp_uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_whole") / "run"
    subprocess.run(_torchrun(29521, out), check=True, timeout=300, capture_output=True)
    return out


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_ddp_killed_then_resumed_matches_an_uninterrupted_ddp_run(ddp_uninterrupted, tmp_path):
    out = tmp_path / "run"
    # torchrun and both workers killed at once, as a crashed node would be.
    process = subprocess.Popen(_torchrun(29522, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(out / "checkpoint.pt")
    time.sleep(0.3)
    workers = _children(process.pid)  # torchrun starts its workers in sessions of their own
    for pid in [process.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert len(workers) == 2
    assert not (out / "final.json").exists()
    done = subprocess.run(_torchrun(29523, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_result(ddp_uninterrupted, out)  # same metrics per epoch, same final weights, bit for bit


def test_ddp_sigterm_stops_every_rank_after_the_same_step(ddp_uninterrupted, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(_torchrun(29524, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(out / "metrics.jsonl")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    _, err = process.communicate(timeout=120)
    if (out / "final.json").exists():
        pytest.skip("the run finished before the signal arrived")
    assert err.count("stopped by SIGTERM") == 1 and "--resume" in err  # both ranks stop; rank 0 says so
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    done = subprocess.run(_torchrun(29525, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert same_result(ddp_uninterrupted, out), f"resumed from {checkpoint['epoch']} epochs + {checkpoint['partial']}"


def test_two_nodes_by_c10d_rendezvous_match_one_node_with_two_processes(ddp_uninterrupted, tmp_path):
    """torchrun's multi-node form (docs/cluster.md): two agents on this machine as two one-process nodes
    meeting at a c10d rendezvous give the one-node two-process run, bit for bit."""
    out = tmp_path / "run"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:29531", "--rdzv_id", "two-nodes",
            "-m", "fixedhead", *DDP_ARGS, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # what torchrun gives each of several processes on one node
    agents = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    results = [agent.communicate(timeout=300) for agent in agents]
    assert [a.returncode for a in agents] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert sum(stdout.count("test accuracy") for stdout, _ in results) == 1  # the global rank 0 alone
    assert same_result(ddp_uninterrupted, out)
