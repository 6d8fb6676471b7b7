"""The CUDA path: data and augmentation on the GPU, bf16 heads, compile, determinism, resume, nccl.

Skipped without a CUDA device (CI has none); run on a GPU machine with `python -m pytest tests/test_gpu.py`.
"""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fixedhead import fit
from fixedhead.config import make_config
from fixedhead.data.pipeline import BatchLoader
from fixedhead.devices import resolve_device
from fixedhead.errors import UserError
from fixedhead.evaluation.trained import evaluate_run
from fixedhead.heads.many_classes import ManyClassHead
from interrupts import fit_interrupted

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = {"data.name": "digits", "model.arch": "fastnet-small", "model.similarity": "cosine", "model.fixed": True,
        "model.scale": 16.0, "train.epochs": 3, "train.batch_size": 64, "train.lr": 0.05, "train.device": "cuda"}


def test_loader_on_the_gpu_gives_the_cpu_batches():
    images = torch.randint(0, 256, (300, 3, 12, 12), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    common = dict(batch_size=64, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], shuffle=True, crop_padding=2,
                  flip=True, channels_last=True)
    cpu, gpu = BatchLoader(images, labels, device="cpu", **common), BatchLoader(images, labels, device="cuda", **common)
    assert gpu.images.is_cuda and gpu.labels.is_cuda  # the dataset itself lives on the GPU
    for (xc, yc), (xg, yg) in zip(cpu.epoch(seed=3, epoch=2), gpu.epoch(seed=3, epoch=2), strict=True):
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)  # same crops and flips, same normalisation


def test_blockwise_loss_of_a_bf16_head_on_the_gpu_is_exact():
    head = ManyClassHead(64, 50_000, "cosine", scale=16.0, seed=1, vectors="bf16", block_size=4096).cuda()
    features = torch.randn(32, 64, device="cuda", requires_grad=True)
    labels = torch.randint(0, 50_000, (32,), device="cuda")
    loss, _ = head.loss_and_predictions(features, labels)
    loss.backward()
    # Oracle: plain float64 cross-entropy over all logits, on the CPU, from the same bf16 vectors.
    f64 = features.detach().cpu().double().requires_grad_()
    w64 = head.weight.cpu().double()
    expected = F.cross_entropy(16.0 * F.normalize(f64, dim=1) @ w64.T, labels.cpu())
    expected.backward()
    assert abs(loss.item() - expected.item()) < 1e-4
    torch.testing.assert_close(features.grad.cpu().double(), f64.grad, rtol=1e-3, atol=1e-6)


def test_compiled_bf16_channels_last_run_on_the_gpu(tmp_path):
    config = make_config(TINY, {"train.bf16": True, "train.channels_last": True, "train.compile": True,
                                "train.epochs": 4})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["status"] == "finished" and final["test_acc"] > 0.85
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert "cuda" in meta["device"]
    # The weights are plain tensors: the same run evaluates on the CPU to within a few bf16 roundings.
    on_cpu = evaluate_run(tmp_path / "run", device="cpu")
    assert abs(on_cpu["acc"] - final["test_acc"]) <= 0.01


def test_whitening_tta_alternating_flip_and_lookahead_run_on_the_gpu(tmp_path):
    config = make_config(TINY, {"train.bf16": True, "train.channels_last": True, "train.epochs": 4,
                                "model.whiten": "frozen", "data.alternating_flip": True, "data.flip": True,
                                "train.tta": "flip-shift", "train.lookahead": 5})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["status"] == "finished" and final["test_acc"] > 0.85 and final["tta"] == "flip-shift"
    on_cpu = evaluate_run(tmp_path / "run", device="cpu")
    assert abs(on_cpu["acc"] - final["test_acc"]) <= 0.01


def test_deterministic_runs_and_resume_repeat_exactly_on_the_gpu(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.bf16": True, "train.channels_last": True})
    first = fit(config, tmp_path / "a", verbose=False)
    second = fit(config, tmp_path / "b", verbose=False)
    fit_interrupted(config, tmp_path / "cut", 1, monkeypatch)
    resumed = fit(config, tmp_path / "cut", resume=True, verbose=False)
    weights = [torch.load(tmp_path / name / "model.pt", weights_only=True)["model"] for name in ("a", "b", "cut")]
    for other in weights[1:]:
        differing = [k for k in weights[0] if not torch.equal(weights[0][k], other[k])]
        assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
    assert first["test_acc"] == second["test_acc"] == resumed["test_acc"]


def test_torchrun_on_one_gpu_uses_nccl_ddp_and_sync_bn(tmp_path):
    out = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29531",
         "-m", "fixedhead", "train", "--data", "digits", "--arch", "fastnet-small", "--similarity", "cosine", "--fixed",
         "--scale", "16", "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--device", "cuda", "--sync-bn",
         "--bf16", "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "final.json").read_text())
    assert final["status"] == "finished" and final["test_acc"] > 0.85
    state = torch.load(out / "model.pt", weights_only=True)["model"]
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped: loads without DDP


def test_device_names():
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="cuda:N"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
