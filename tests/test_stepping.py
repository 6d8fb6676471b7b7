"""Gradient accumulation, clipping, float16 with a scaler and the weights' EMA, each against the plain
torch loop its documentation gives (or, for the EMA, its formula)."""

import copy
import json
import math

import pytest
import torch
from tqdm import tqdm

from fixedhead.config import make_config
from fixedhead.data.loaders import prepare
from fixedhead.errors import UserError
from fixedhead.models.classifier import build_model
from fixedhead.optim import make_optimizer
from fixedhead.training import epoch as steps
from fixedhead.training.fit import fit
from fixedhead.training.stepping import Stepper, make_ema
from interrupts import fit_interrupted, same_result
from tiny import TINY


@pytest.fixture(scope="module")
def digits():
    config = make_config(TINY, {"train.epochs": 1})
    return prepare(config.data, seed=0, batch_size=64, eval_batch_size=1000, device="cpu")["train"]


def _ours(loader, overrides, limit=None):
    config = make_config(TINY, {"train.epochs": 1, "model.fixed": True, **overrides})
    model = build_model(config.model, 0, 10, 1, 8)
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model, config.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ema = make_ema(model, config.train.ema)
    scaler = torch.amp.GradScaler("cpu") if config.train.fp16 else None
    stepper = Stepper(optimizer, scheduler, config.train, model, ema=ema, scaler=scaler)
    with tqdm(disable=True) as progress:
        steps.train_epoch(steps.LossOf(model), loader, stepper, config.train, 0, 0, progress, limit=limit)
    return config, model, ema, reference


def _by_hand(model, loader, config, every=1, clip=None, fp16=False, on_step=lambda: None, limit=None):
    """The loop of torch's AMP and gradient-accumulation recipes, written out."""
    optimizer = make_optimizer(model, config.train)
    scaler = torch.amp.GradScaler("cpu", enabled=fp16)
    model.train()
    batches = list(loader.epoch(0, 0, 0, 1))[:limit]
    for i, (images, labels) in enumerate(batches):
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            loss = model.loss(images, labels)[0]
        scaler.scale(loss / every).backward()
        if (i + 1) % every == 0 or i == len(batches) - 1:
            scaler.unscale_(optimizer)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            on_step()
    return len(batches)


@pytest.mark.parametrize("overrides, loop", [
    ({"train.accumulate": 3}, {"every": 3}),
    ({"train.clip_grad": 0.05}, {"clip": 0.05}),
    ({"train.accumulate": 2, "train.clip_grad": 0.05}, {"every": 2, "clip": 0.05}),
    ({"train.fp16": True, "train.accumulate": 2}, {"fp16": True, "every": 2, "limit": 5}),  # float16: slow on a CPU
])
def test_the_step_is_the_one_torch_documents(digits, overrides, loop):
    config, ours, _, reference = _ours(digits, overrides, loop.get("limit"))
    batches = _by_hand(reference, digits, config, **loop)
    assert batches % loop.get("every", 1) or "every" not in loop  # the short last step is exercised
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_clipping_changes_the_weights(digits):
    """So that the clipping case above cannot pass by clipping nothing."""
    _, clipped, _, start = _ours(digits, {"train.clip_grad": 0.05})
    _, free, _, _ = _ours(digits, {})
    weight = "encoder.body.0.weight"
    assert not torch.allclose(clipped.state_dict()[weight], free.state_dict()[weight])


def test_the_ema_follows_its_formula_over_weights_and_buffers(digits):
    decay = 0.9
    config, ours, ema, reference = _ours(digits, {"train.ema": decay})
    average = {}

    def update():
        for name, value in reference.state_dict().items():
            if value.is_floating_point():
                average[name] = value.double().clone() if name not in average else (
                    decay * average[name] + (1 - decay) * value.double())

    _by_hand(reference, digits, config, on_step=update)
    for name, value in ema.module.state_dict().items():
        if name in average:
            torch.testing.assert_close(value.double(), average[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.allclose(ema.module.state_dict()["encoder.body.0.weight"], ours.state_dict()["encoder.body.0.weight"])


def test_a_run_with_ema_keeps_the_average_and_resumes_exactly(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.epochs": 2, "train.ema": 0.9, "train.accumulate": 2, "train.clip_grad": 1.0})
    straight = fit(config, tmp_path / "straight", verbose=False)
    fit_interrupted(config, tmp_path / "resumed", 1, monkeypatch)
    fit(config, tmp_path / "resumed", resume=True, verbose=False)
    assert same_result(tmp_path / "straight", tmp_path / "resumed")
    saved = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    checkpoint = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)  # the run's weights are the average's
    assert math.isfinite(straight["test_acc"]) and json.loads((tmp_path / "straight" / "final.json").read_text())


def test_fp16_and_bf16_together_are_one_line():
    with pytest.raises(UserError, match="train.fp16 and train.bf16=True both choose"):
        make_config(TINY, {"train.fp16": True, "train.bf16": True})
