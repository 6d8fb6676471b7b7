"""Long-tailed training splits, the accuracies long-tail papers report, and neural collapse (NC1-NC4,
minority collapse), against LDAM's count formula, scikit-learn and a numpy oracle."""

import math

import numpy as np
import pytest
import torch

from fixedhead import metrics
from fixedhead.config import make_config
from fixedhead.data import load_split
from fixedhead.data.loaders import prepare
from fixedhead.data.pipeline import long_tail, long_tail_counts
from fixedhead.errors import UserError
from tiny import TINY


def test_exp_and_step_counts_follow_the_protocols():
    counts = long_tail_counts([5000] * 10, 100, "exp")
    assert counts == [int(5000 * (1 / 100) ** (i / 9)) for i in range(10)]  # LDAM's get_img_num_per_cls
    assert counts[0] == 5000 and counts[-1] == 50
    assert long_tail_counts([500] * 4, 10, "step") == [500, 500, 50, 50]
    assert long_tail_counts([7, 9], 1, "exp") == [7, 9]
    with pytest.raises(UserError, match="leaves the rarest class with 0 training images"):
        long_tail_counts([50] * 10, 100, "exp")


def test_the_long_tailed_subset_is_the_same_for_every_run_and_validation_stays_balanced():
    labels = torch.arange(10).repeat(60)
    kept = long_tail(labels, 10, 10, "exp", seed=0)
    assert torch.equal(kept, long_tail(labels, 10, 10, "exp", seed=0)) and not torch.equal(
        kept, long_tail(labels, 10, 10, "exp", seed=1))
    assert torch.bincount(labels[kept]).tolist() == long_tail_counts([60] * 10, 10, "exp")
    config = make_config(TINY, {"data.imbalance": 5, "data.val_fraction": 0.2})
    data = prepare(config.data, seed=3, batch_size=64, eval_batch_size=500, device="cpu")
    train_counts = torch.bincount(data["train"].labels, minlength=10)
    val_counts = torch.bincount(data["val"].labels, minlength=10)
    available = torch.bincount(load_split(config.data, "train").labels, minlength=10) - val_counts
    assert train_counts.tolist() == long_tail_counts(available.tolist(), 5, "exp")
    assert val_counts.max() - val_counts.min() <= 2  # validation held out before the imbalance


def test_balanced_and_shot_group_accuracies():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 6, 600))
    predicted = torch.where(torch.from_numpy(rng.random(600) < 0.6), labels, torch.from_numpy(rng.integers(0, 6, 600)))
    counts = [500, 150, 60, 30, 10, 5]
    got = metrics.long_tail_accuracies(predicted, labels, counts)
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels.numpy(), predicted.numpy()))
    per_class = [((predicted == labels) & (labels == c)).sum().item() / (labels == c).sum().item() for c in range(6)]
    assert got["many_acc"] == pytest.approx(np.mean(per_class[:2]))
    assert got["medium_acc"] == pytest.approx(np.mean(per_class[2:4]))
    assert got["few_acc"] == pytest.approx(np.mean(per_class[4:]))


def _simplex(num_classes: int, dim: int) -> np.ndarray:
    """C unit vectors in D dimensions with pairwise cosine -1 / (C - 1)."""
    centred = np.eye(num_classes) - 1 / num_classes
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((dim, num_classes)))[0]
    frame = centred @ basis.T
    return frame / np.linalg.norm(frame, axis=1, keepdims=True)


def test_an_exact_simplex_is_fully_collapsed():
    frame = torch.from_numpy(_simplex(5, 8))
    labels = torch.arange(5).repeat(4)
    features = 3.0 * frame[labels]  # no within-class variability, class means on the simplex
    logits = features @ frame.T
    got = metrics.neural_collapse(features, labels, frame, logits)
    assert got["nc1"] == pytest.approx(0, abs=1e-12) and got["nc3"] == pytest.approx(0, abs=1e-12)
    assert got["nc4"] == 1 and got["nc2_equiangular"] == pytest.approx(0, abs=1e-12)
    assert got["nc2_equinorm_means"] == pytest.approx(0, abs=1e-12)


def test_neural_collapse_matches_a_numpy_oracle():
    rng = np.random.default_rng(1)
    num_classes, dim = 6, 10
    labels = rng.integers(0, num_classes, 300)
    features = rng.standard_normal((300, dim)) + 2 * rng.standard_normal((num_classes, dim))[labels]
    weight, logits = rng.standard_normal((num_classes, dim)), rng.standard_normal((300, num_classes))
    got = metrics.neural_collapse(torch.from_numpy(features), torch.from_numpy(labels), torch.from_numpy(weight),
                                  torch.from_numpy(logits), train_counts=[100, 100, 50, 20, 10, 5])
    mu_g = features.mean(0)
    means = np.stack([features[labels == c].mean(0) for c in range(num_classes)])
    centred = means - mu_g
    s_w = sum(np.outer(f - means[y], f - means[y]) for f, y in zip(features, labels)) / len(features)
    s_b = centred.T @ centred / num_classes
    assert got["nc1"] == pytest.approx(np.trace(s_w @ np.linalg.pinv(s_b)) / num_classes, rel=1e-6)
    norms = np.linalg.norm(centred, axis=1)
    assert got["nc2_equinorm_means"] == pytest.approx(norms.std() / norms.mean())
    unit = centred / norms[:, None]
    cos = (unit @ unit.T)[~np.eye(num_classes, dtype=bool)]
    assert got["nc2_equiangular"] == pytest.approx(np.abs(cos + 1 / (num_classes - 1)).mean())
    nc3 = np.linalg.norm(weight / np.linalg.norm(weight) - centred / np.linalg.norm(centred))
    assert got["nc3"] == pytest.approx(nc3)
    nearest = np.linalg.norm(features[:, None] - means[None], axis=2).argmin(1)
    assert got["nc4"] == pytest.approx((nearest == logits.argmax(1)).mean())
    rare = weight[[3, 4, 5]] / np.linalg.norm(weight[[3, 4, 5]], axis=1, keepdims=True)
    assert got["minority_collapse"] == pytest.approx((rare @ rare.T)[~np.eye(3, dtype=bool)].mean())
    assert math.isfinite(got["nc1"])


def test_a_long_tailed_run_reports_its_groups_and_its_analysis_the_collapse(tmp_path, capsys):
    import json

    from fixedhead.cli import main
    from tiny import TINY_FLAGS

    run = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(run), "--set", "data.imbalance=10"]) == 0
    final = json.loads((run / "final.json").read_text())
    counts = final["train_class_counts"]
    assert max(counts) / min(counts) == pytest.approx(10, rel=0.1)
    assert {"test_balanced_acc", "test_many_acc", "test_medium_acc", "test_few_acc"} <= set(final)
    assert main(["analyze", str(run)]) == 0
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert {"nc1", "nc2_equiangular", "nc3", "nc4", "minority_collapse"} <= set(analysis)
    assert {"confusion.png", "accuracy_vs_training_images.png"} <= set(analysis["figures"])
    assert (run / "analysis" / "accuracy_vs_training_images.pdf").stat().st_size > 1000


def test_data_info_shows_the_per_class_counts_of_a_long_tailed_split(capsys):
    import json

    from fixedhead.cli import main

    assert main(["data", "info", "digits", "--imbalance", "10", "--imbalance-type", "step"]) == 0
    counts = json.loads(capsys.readouterr().out)["train_per_class"]
    plain = torch.bincount(load_split(make_config(TINY).data, "train").labels).tolist()
    assert list(counts.values()) == long_tail_counts(plain, 10, "step")
