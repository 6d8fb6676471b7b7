"""Experiment tracking: the fit callback, TensorBoard and wandb trackers, the head's numbers; and the
figures' labels."""

import importlib.machinery
import json
import sys
import types

import numpy as np
import pytest

import tiny
from fixedhead import plots
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.heads.class_head import ClassHead
from fixedhead.runs import RunDir
from fixedhead.trackers import head_numbers
from fixedhead.training.fit import fit

TINY = {**tiny.TINY, "data.val_fraction": 0.1}


class Recorder:
    def __init__(self):
        self.records, self.closed = [], []

    def __call__(self, record):
        self.records.append(dict(record))

    def close(self, final):
        self.closed.append(final)


def test_callbacks_see_every_logged_epoch_then_the_final_metrics(tmp_path):
    recorder = Recorder()
    config = make_config(TINY, {"model.similarity": "cosine", "model.learn_scale": True, "model.scale": 4.0})
    final = fit(config, tmp_path / "run", verbose=False, callbacks=[recorder])
    assert recorder.records == RunDir(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in recorder.records] == [1, 2] and recorder.closed == [final]
    assert {"head_cos_mean", "head_cos_max", "head_scale", "val_acc", "lr"} <= set(recorder.records[-1])


def test_head_numbers_against_numpy():
    head = ClassHead(16, 7, similarity="cosine", scale=3.0, seed=1)
    w = head.weight.detach().double().numpy()
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    off = (unit @ unit.T)[~np.eye(7, dtype=bool)]
    numbers = head_numbers(head)
    assert numbers["head_cos_mean"] == pytest.approx(off.mean(), abs=1e-6)
    assert numbers["head_cos_max"] == pytest.approx(off.max(), abs=1e-6)
    assert numbers["head_scale"] == pytest.approx(3.0)
    assert head_numbers(ClassHead(16, 7, "dot", scale=0.25))["head_scale"] == pytest.approx(0.25)


def test_tensorboard_holds_the_logged_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", "--data", "digits", "--arch", "fastnet-small", "--epochs", "2", "--log", "tensorboard",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = RunDir(tmp_path / "run").read_metrics()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["train_loss"] for r in logged])
    assert [e.step for e in events.Scalars("head/cos_max")] == [1, 2]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert events.Scalars("test/acc")[0].value == pytest.approx(final["test_acc"])


def test_wandb_tracker_logs_each_epoch(tmp_path, monkeypatch):
    logged, finished = [], []
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: types.SimpleNamespace(log=lambda data, step: logged.append((step, data)),
                                                       summary={}, finish=lambda: finished.append(kwargs["name"]))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    fit(make_config(TINY, {"train.log": "wandb"}), tmp_path / "run", verbose=False)
    assert [step for step, _ in logged] == [1, 2] and finished == ["run"]
    assert logged[0][1]["train_loss"] == RunDir(tmp_path / "run").read_metrics()[0]["train_loss"]


def test_mlflow_holds_the_logged_curves_and_the_config_inside_the_run(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fit(make_config(TINY, {"train.log": "mlflow"}), tmp_path / "run", verbose=False)
    client = mlflow.MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").as_uri())
    (found,) = client.search_runs([client.get_experiment_by_name("fixedhead").experiment_id])
    history = client.get_metric_history(found.info.run_id, "train_loss")
    logged = RunDir(tmp_path / "run").read_metrics()
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in logged])
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert found.data.metrics["test_acc"] == pytest.approx(final["test_acc"]) and found.info.status == "FINISHED"
    assert found.data.params["model.similarity"] == "dot" and found.info.run_name == "run"


def test_a_tracker_without_its_package_is_one_line_and_writes_nothing(tmp_path, capsys):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert main(["train", "--data", "digits", "--log", "wandb", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'fixedhead[wandb]'" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture
def drawn(monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def test_report_bars_name_both_axes_and_show_error_bars(drawn, tmp_path):
    table = {"metric": "test_acc", "rows": ["0.1", "0.2"], "columns": ["a", "b"], "row_keys": ["train.lr"],
             "cells": {r: {c: {"mean": 0.5, "std": 0.02, "n": 3} for c in "ab"} for r in ("0.1", "0.2")}}
    plots.bars(table, tmp_path / "f", ylabel="test acc (%)", xlabel="train.lr", factor=100)
    ax = drawn[0].axes[0]
    assert ax.get_xlabel() == "train.lr" and ax.get_ylabel() == "test acc (%)"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([50.0] * 4)
    bars = [c for c in ax.containers if hasattr(c, "errorbar") and c.errorbar is not None]
    segments = bars[0].errorbar.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([4.0, 4.0])  # ± 2 points, in %


def test_feature_pictures_have_equal_aspect_and_named_axes(drawn, tmp_path):
    plots.feature_scatter(np.random.default_rng(0).normal(size=(20, 2)), np.arange(20) % 2, ["a", "b"],
                          tmp_path / "f", "t", axes=("PC 1 (60% of variance)", "PC 2 (20% of variance)"))
    ax = drawn[0].axes[0]
    assert ax.get_aspect() == 1.0 and ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")


def test_the_analysis_pca_axes_carry_the_explained_variance(tmp_path, drawn):
    from fixedhead.evaluation.analysis import analyze

    fit(make_config(TINY, {"train.epochs": 1}), tmp_path / "run", verbose=False)
    analyze(tmp_path / "run")
    pca = [f for f in drawn if f.axes and f.axes[0].get_xlabel().startswith("PC 1")]
    assert pca and all(f.axes[0].get_aspect() == 1.0 for f in pca)


def test_curve_confidence_interval_against_scipy():
    from scipy import stats

    from fixedhead.experiments.statistics import mean_ci, summarise

    values = [0.61, 0.64, 0.66, 0.59]
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    mean, got_low, got_high = mean_ci(summarise(values))
    assert (mean, got_low, got_high) == pytest.approx((np.mean(values), low, high))
    assert np.isnan(mean_ci(summarise([0.5]))[1])


def test_curves_use_a_log_axis_and_label_it(drawn, tmp_path):
    plots.curves({"fixed - learned": ([10, 100, 1000], [1.0, 2.0, 3.0], [0.5, 1.0, 2.0], [1.5, 3.0, 4.0])},
                 tmp_path / "c", "data.num_classes", "test acc (%)", log_x=True, zero_line=True)
    ax = drawn[0].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "data.num_classes" and ax.get_ylabel() == "test acc (%)"
