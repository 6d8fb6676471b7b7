import json
import math
from unittest.mock import patch

import pytest
import torch

import tiny
from conftest import write_image_folder
from fixedhead import class_vectors, fit, optim
from fixedhead.config import make_config
from fixedhead.errors import UserError
from fixedhead.models.classifier import build_model
from fixedhead.training.epoch import LossOf
from interrupts import fit_interrupted, same_result

TINY = {**tiny.TINY, "train.epochs": 3, "train.lr": 0.05}


def test_fit_writes_a_self_describing_run(tmp_path, monkeypatch):
    import fixedhead.devices

    monkeypatch.setattr(fixedhead.devices, "native_bf16", lambda device: False)  # a CPU without bf16 instructions
    config = make_config(TINY, {"model.similarity": "cosine", "model.fixed": True, "seed": 3, "train.bf16": "auto"})
    final = fit(config, tmp_path / "run", verbose=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "meta.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "final.json"):
        assert (run / name).exists(), name
    assert json.loads((run / "final.json").read_text()) == final
    assert 0 <= final["test_acc"] <= 1 and final["epochs"] == 3 and final["train_time_s"] > 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["torch"] == torch.__version__
    assert meta["bf16"] is False  # what train.bf16: auto meant on this device
    saved = torch.load(run / "model.pt", weights_only=True)
    assert torch.equal(saved["model"]["head.weight"], class_vectors(10, 128, "random", seed=3))


def test_optimizer_never_sees_fixed_vectors_and_decays_learned_ones_as_told():
    config = make_config(TINY, {"train.head_weight_decay": 0.0, "model.bias": True})
    model = build_model(config.model, 0, 10, 1, 16)
    groups = {g["name"]: g for g in optim.make_optimizer(model, config.train).param_groups}
    assert any(p is model.head.weight for p in groups["class_vectors"]["params"])
    assert groups["class_vectors"]["weight_decay"] == 0.0 and groups["head_other"]["weight_decay"] == 0.0
    assert groups["encoder"]["weight_decay"] == config.train.weight_decay
    fixed = build_model(make_config(TINY, {"model.fixed": True}).model, 0, 10, 1, 16)
    names = {g["name"] for g in optim.make_optimizer(fixed, config.train).param_groups}
    assert "class_vectors" not in names
    ids = {id(p) for g in optim.make_optimizer(fixed, config.train).param_groups for p in g["params"]}
    assert ids == {id(p) for p in fixed.parameters()}


def test_lr_schedules():
    assert [optim.lr_factor(s, 10, 2, "linear") for s in (0, 1, 2, 6)] == [0.5, 1.0, 1.0, 0.5]
    assert optim.lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert [optim.lr_factor(s, 10, 0, "step") for s in (4, 5, 8)] == [1.0, pytest.approx(0.1), pytest.approx(0.01)]


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.epochs": 4, "train.select": "best_val", "train.schedule": "cosine"})
    whole = fit(config, tmp_path / "whole", verbose=False)
    fit_interrupted(config, tmp_path / "cut", 2, monkeypatch)
    with pytest.raises(UserError, match="--resume"):
        fit(config, tmp_path / "cut", verbose=False)
    resumed = fit(config, tmp_path / "cut", resume=True, verbose=False)
    for key in ("test_acc", "test_loss", "val_acc", "selected_epoch"):
        assert resumed[key] == whole[key], key
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_a_fraction_of_an_epoch_ends_the_last_one_early_and_resumes_inside_it(tmp_path, monkeypatch):
    """train.epochs 2.4 with 8 steps an epoch: 19 steps, the third epoch 3 of 8, the linear schedule ending
    at 0 on the 19th step; a stop inside that short epoch resumes to the same weights."""
    import fixedhead.training.epoch
    from fixedhead.training.epoch import Interrupted

    config = make_config(TINY, {"train.epochs": 2.4, "train.select": "best_val"})
    whole = fit(config, tmp_path / "whole", verbose=False)
    per_epoch = whole["train_images"] // 128  # the last partial batch is dropped
    shown = per_epoch * 128
    planned = round(2.4 * per_epoch)
    assert (whole["steps"], whole["epochs"]) == (planned, 3)
    assert whole["images_seen"] == 2 * shown + (planned - 2 * per_epoch) * 128
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    assert state["scheduler"]["last_epoch"] == planned  # the scheduler stepped once per optimizer step
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0)  # decayed to 0 at the last step
    metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and all("val_acc" in m for m in metrics)

    calls = iter(range(10**6))  # asks to stop after the second step of the short third epoch
    monkeypatch.setattr(fixedhead.training.epoch, "_should_stop", lambda *a: next(calls) == 2 * per_epoch + 1)
    with pytest.raises(Interrupted, match=f"after step 2 of {planned - 2 * per_epoch}"):
        fit(config, tmp_path / "cut", verbose=False)
    monkeypatch.undo()
    resumed = fit(config, tmp_path / "cut", resume=True, verbose=False)
    assert same_result(tmp_path / "whole", tmp_path / "cut") and resumed["steps"] == planned


def test_finished_run_is_never_clobbered(tmp_path):
    config = make_config(TINY, {"train.epochs": 1})
    fit(config, tmp_path / "run", verbose=False)
    before = (tmp_path / "run" / "final.json").read_bytes()
    with pytest.raises(UserError, match="already holds a run trained to its end"):
        fit(config, tmp_path / "run", verbose=False)
    assert (tmp_path / "run" / "final.json").read_bytes() == before
    fit(make_config(TINY, {"train.epochs": 1, "seed": 1}), tmp_path / "run", overwrite=True, verbose=False)
    assert json.loads((tmp_path / "run" / "final.json").read_text())["seed"] == 1


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    # lr 1000 at logit scale 1000: non-finite within two epochs in float32 too (at scale 1 the loss may stay finite)
    config = make_config(TINY, {"train.epochs": 2, "train.lr": 1000, "train.warmup_epochs": 0, "model.scale": 1000})
    with pytest.raises(UserError, match="training diverged: loss is nan in epoch [12] "):
        fit(config, tmp_path / "run", verbose=False)
    assert json.loads((tmp_path / "run" / "final.json").read_text())["status"] == "diverged"


def test_a_run_that_ends_no_better_than_a_uniform_guess_is_at_chance_not_diverged(tmp_path):
    """lr 1e-4: the learned dot head's loss falls (2.79 -> 2.68 here) but stays above ln 10, the loss of
    guessing uniformly: the run learned nothing, though it did not diverge; the end loss is the mean over the
    last quarter of the last epoch's steps, recomputed here from the per-step losses."""
    steps = []
    original = LossOf.forward
    with patch.object(LossOf, "forward", lambda self, *a: steps.append(original(self, *a)) or steps[-1]):
        final = fit(make_config(TINY, {"train.epochs": 2, "train.lr": 1e-4}), tmp_path / "run", verbose=False)
    first, last = final["train_losses"]
    assert last < first and final["train_loss_end"] >= math.log(10)
    assert final["status"] == "at_chance"
    per_epoch = len(steps) // 2
    quarter = [(loss.item(), len(pred)) for loss, pred in steps[-max(1, per_epoch // 4):]]
    expected = sum(loss * n for loss, n in quarter) / sum(n for _, n in quarter)
    assert final["train_loss_end"] == pytest.approx(expected, rel=1e-5)


def test_a_one_epoch_run_is_judged_by_the_end_of_its_epoch(tmp_path):
    """One epoch: its mean loss includes the untrained first steps (at lr 0.2 here, 2.64 > ln 10 on an AMD
    EPYC in bf16), so it can sit above ln C although the run learned; the end loss says so."""
    final = fit(make_config(TINY, {"train.epochs": 1, "train.lr": 0.2}), tmp_path / "run", verbose=False)
    (mean,) = set(final["train_losses"])
    assert final["train_loss_end"] < min(mean, math.log(10)) and final["status"] == "finished"


def test_imagefolder_training_learns_colour_classes(tmp_path):
    """24 images a class (72 steps): with 6 a class (18 steps) the batch-norm running statistics lagged so far
    that eval-mode accuracy was 1/3 on an Intel AMX machine for some seeds, though the training loss was 0.12."""
    folder = write_image_folder(tmp_path / "images", per_class=24)
    config = make_config({"data.name": "imagefolder", "data.data_dir": str(folder), "model.arch": "resnet20",
                          "train.epochs": 6, "train.batch_size": 6, "train.lr": 0.05})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["num_test"] == 72 and final["test_acc"] > 0.6  # chance is 1/3


def test_interrupted_epoch_sums_follow_each_rank_or_fall_to_rank_zero():
    from fixedhead.training.distributed import Context
    from fixedhead.training.epoch import _partial_sums

    per_rank = [[1.5, 10, 32, 0.5, 8], [2.5, 12, 32, 0.7, 8]]
    assert _partial_sums(per_rank, Context(1, 2)) == [2.5, 12, 32, 0.7, 8]  # same world: each rank its own
    assert _partial_sums(per_rank, Context(0, 1)) == [4.0, 22, 64, 1.2, 16]  # fewer processes: rank 0 the totals
    assert _partial_sums(per_rank, Context(3, 4)) == [0.0, 0, 0, 0.0, 0]  # more: the others start at zero
    # A checkpoint of a version without end sums: they start at zero.
    assert _partial_sums([[1.5, 10, 32]], Context(0, 1)) == [1.5, 10, 32, 0.0, 0]


@pytest.mark.parametrize("watched,mode,pick", [("acc", "max", max), ("loss", "min", min)])
def test_the_plateau_schedule_watches_the_validation_metric_asked_for(tmp_path, watched, mode, pick):
    config = make_config(TINY, {"train.epochs": 3, "train.schedule": "plateau", "train.plateau_on": watched})
    fit(config, tmp_path / "run", verbose=False)
    plateau = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["plateau"]
    logged = [json.loads(line)[f"val_{watched}"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert plateau["mode"] == mode and plateau["best"] == pick(logged)


def test_a_resume_records_where_and_in_which_precision_it_went_on(tmp_path, monkeypatch, capsys):
    import fixedhead.devices

    config = make_config(TINY, {"train.epochs": 2, "train.bf16": "auto"})
    monkeypatch.setattr(fixedhead.devices, "native_bf16", lambda device: False)  # started without fast bf16
    fit_interrupted(config, tmp_path / "cut", 1, monkeypatch)
    monkeypatch.setattr(fixedhead.devices, "native_bf16", lambda device: True)  # moved to a device with it
    capsys.readouterr()
    fit(config, tmp_path / "cut", resume=True, verbose=True)
    meta = json.loads((tmp_path / "cut" / "meta.json").read_text())
    assert meta["bf16"] is False  # what the first part meant by auto
    assert meta["resumed"] == [{"epoch": 1, "device": "cpu", "bf16": True}]
    assert "started without bf16 autocast and goes on with it" in capsys.readouterr().err


def test_a_budget_of_images_seen_sets_the_epochs_and_resumes(tmp_path, monkeypatch):
    """train.images_seen: the same number of training images whatever the training-set size."""
    from fixedhead.data.loaders import prepare
    from fixedhead.runs import RunDir
    from fixedhead.training.fit import planned_steps

    config = make_config(TINY, {"train.images_seen": 2000, "train.schedule": "cosine"})
    whole = fit(config, tmp_path / "whole", verbose=False)
    shown = whole["train_images"] // 128 * 128  # the last partial batch of 128 is dropped
    assert whole["epochs"] == round(2000 / shown) == len(RunDir(tmp_path / "whole").read_metrics())
    assert whole["images_seen"] == whole["epochs"] * shown
    assert whole["epochs"] != config.train.epochs  # the budget, not the default, decided
    loader = prepare(config.data, seed=0, batch_size=128, eval_batch_size=128, device="cpu", channels_last=False,
                     with_val=False)["train"]
    assert planned_steps(config.train, loader) == round(2000 / shown) * len(loader)
    fit_interrupted(config, tmp_path / "cut", 1, monkeypatch)
    resumed = fit(config, tmp_path / "cut", resume=True, verbose=False)
    assert resumed["test_acc"] == whole["test_acc"] and resumed["epochs"] == whole["epochs"]
