import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fixedhead import class_vectors, metrics


def test_cosine_matrix_of_orthogonal_vectors_is_identity():
    w = class_vectors(8, 32, "orthogonal", seed=1) * torch.arange(1.0, 9.0)[:, None]  # any row norms
    np.testing.assert_allclose(metrics.cosine_matrix(w).numpy(), np.eye(8), atol=1e-6)


def test_confusion_matrix_counts():
    labels, predicted = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 0, 2, 2])
    expected = np.zeros((3, 3), int)
    for t, p in zip(labels.tolist(), predicted.tolist()):
        expected[t, p] += 1
    assert np.array_equal(metrics.confusion_matrix(labels, predicted, 3).numpy(), expected)


def test_spearman_matches_scipy_on_hand_built_matrices():
    rng = np.random.default_rng(0)
    cos = rng.uniform(-1, 1, (5, 5))
    conf = rng.integers(0, 9, (5, 5))
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    expected = stats.spearmanr([cos[i, j] for i, j in pairs], [conf[i, j] for i, j in pairs])
    result = metrics.similarity_confusion_spearman(torch.tensor(cos), torch.tensor(conf))
    assert result["spearman_rho"] == pytest.approx(expected.statistic)
    assert result["spearman_p"] == pytest.approx(expected.pvalue) and result["num_pairs"] == 20


def test_no_confusion_at_all_is_an_undefined_rho_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.similarity_confusion_spearman(torch.rand(4, 4), torch.zeros(4, 4, dtype=torch.long))
    assert np.isnan(result["spearman_rho"])


def test_confused_pair_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    cos = rng.choice([-0.5, 0.0, 0.25, 0.5], size=(30, 30))  # few values: many ties
    conf = rng.integers(0, 3, (30, 30)) * (rng.random((30, 30)) < 0.1)  # about 90% of pairs unconfused
    pairs = [(i, j) for i in range(30) for j in range(30) if i != j]
    expected = roc_auc_score([conf[i, j] > 0 for i, j in pairs], [cos[i, j] for i, j in pairs])
    result = metrics.confused_pair_auc(torch.tensor(cos), torch.tensor(conf))
    assert result["confused_pair_auc"] == pytest.approx(expected)
    assert result["confused_pairs"] == sum(conf[i, j] > 0 for i, j in pairs)
    # confusions exactly on the most similar pairs: 1; on the least similar: 0; none at all: undefined
    rank = torch.tensor(cos) + torch.arange(900).view(30, 30) * 1e-6  # distinct values
    top = (rank > rank.flatten().kthvalue(850).values).long()
    assert metrics.confused_pair_auc(rank, top)["confused_pair_auc"] == 1.0
    assert metrics.confused_pair_auc(-rank, top)["confused_pair_auc"] == 0.0
    assert np.isnan(metrics.confused_pair_auc(rank, torch.zeros(30, 30, dtype=torch.long))["confused_pair_auc"])


def test_compactness_against_numpy():
    rng = np.random.default_rng(1)
    f, w = rng.normal(size=(40, 6)), rng.normal(size=(4, 6))
    labels, predicted = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    cos = unit(f) @ unit(w).T
    result = metrics.compactness(*map(torch.tensor, (f, w, labels, predicted)))
    assert result["mean_cos_to_predicted"] == pytest.approx(cos[np.arange(40), predicted].mean())
    assert result["mean_cos_to_true"] == pytest.approx(cos[np.arange(40), labels].mean())
    right = predicted == labels
    assert result["mean_cos_to_predicted_correct"] == pytest.approx(cos[np.arange(40), predicted][right].mean())


def test_collapsed_features_give_compactness_one_and_scatter_zero():
    means = torch.randn(5, 16, dtype=torch.float64)
    labels = torch.arange(50) % 5
    features = means[labels]
    assert metrics.within_class_cos(features, labels, 5) == pytest.approx(1.0)
    assert metrics.scatter_ratio(features, labels, 5) == pytest.approx(0.0, abs=1e-12)


def test_scatter_ratio_matches_the_textbook_formula():
    rng = np.random.default_rng(2)
    x, labels = rng.normal(size=(200, 7)) + np.repeat(rng.normal(size=(4, 7)) * 2, 50, axis=0), np.repeat(np.arange(4), 50)
    mu, sw, sb = x.mean(0), np.zeros((7, 7)), np.zeros((7, 7))
    for c in range(4):
        xc = x[labels == c]
        m = xc.mean(0)
        sw += (xc - m).T @ (xc - m)
        sb += len(xc) * np.outer(m - mu, m - mu)
    expected = np.trace(sw / 200 @ np.linalg.pinv(sb / 200)) / 4
    assert metrics.scatter_ratio(torch.tensor(x), torch.tensor(labels), 4) == pytest.approx(expected, rel=1e-6)


def test_separability_of_a_simplex_head():
    w = class_vectors(6, 12, "simplex")
    labels = torch.arange(60) % 6
    result = metrics.separability(w, w[labels] * 3, labels)
    assert result["class_vector_cos_max"] == pytest.approx(-0.2, abs=1e-6)
    assert result["class_mean_cos_mean"] == pytest.approx(-0.2, abs=1e-6) and result["within_class_cos"] == pytest.approx(1)


def test_two_hundred_classes_ten_thousand_images_take_seconds():
    torch.manual_seed(0)
    features, labels = torch.randn(10_000, 512), torch.randint(0, 200, (10_000,))
    weight, predicted = torch.randn(200, 512), torch.randint(0, 200, (10_000,))
    start = time.perf_counter()
    metrics.separability(weight, features, labels)
    metrics.compactness(features, weight, labels, predicted)
    metrics.similarity_confusion_spearman(metrics.cosine_matrix(weight), metrics.confusion_matrix(labels, predicted, 200))
    metrics.cluster_order(metrics.cosine_matrix(weight))
    assert time.perf_counter() - start < 30  # seconds, not minutes (about 1 s here)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.integers(2, 64), nonnegative=st.booleans())
def test_no_feature_in_the_orthant_passes_the_cosine_ceiling(seed, dim, nonnegative):
    """The bound itself: every feature (non-negative, as after ReLU and pooling, or of any signs) has
    cos(f, w) <= the ceiling computed for it; the ceiling is reached by the agreeing part of w."""
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((16, dim))
    f = np.abs(f) if nonnegative else f
    w = rng.standard_normal((3, dim))
    classes = rng.integers(0, 3, 16)
    cos = (f * w[classes]).sum(1) / np.linalg.norm(f, axis=1) / np.linalg.norm(w[classes], axis=1)
    for b in range(16):  # per image: the ceiling of that image alone
        one = metrics.cosine_ceiling(torch.tensor(f[b:b + 1]), torch.tensor(w), torch.tensor(classes[b:b + 1]))
        assert cos[b] <= one + 1e-9
        agreeing = np.where(np.sign(np.where(f[b] >= 0, 1, -1)) == np.sign(w[classes[b]]), w[classes[b]], 0)
        if not agreeing.any():  # no coordinate of w agrees in sign: nothing in the orthant points its way
            assert one == 0
            continue
        reached = agreeing @ w[classes[b]] / np.linalg.norm(agreeing) / np.linalg.norm(w[classes[b]])
        assert reached == pytest.approx(one, abs=1e-9)  # and the agreeing part of w attains it


def test_the_ceiling_of_non_negative_features_is_about_one_over_root_two_for_random_vectors():
    weight = torch.tensor(np.random.default_rng(0).standard_normal((10, 512)))
    features = torch.rand(100, 512)
    ceiling = metrics.cosine_ceiling(features, weight, torch.arange(100) % 10)
    expected = np.mean([np.linalg.norm(np.clip(w, 0, None)) / np.linalg.norm(w) for w in weight.numpy()])
    assert ceiling == pytest.approx(expected) and abs(ceiling - 2 ** -0.5) < 0.03


def test_top_k_accuracy_matches_sklearn():
    from sklearn.metrics import top_k_accuracy_score

    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 12, generator=generator), torch.randint(0, 12, (500,), generator=generator)
    expected = top_k_accuracy_score(labels.numpy(), logits.numpy(), k=5, labels=np.arange(12))
    assert metrics.top_k_accuracy(logits, labels) == pytest.approx(expected)


def test_final_json_and_score_give_top5_where_there_are_more_than_5_classes(tiny_run, capsys):
    import json

    from fixedhead.cli import main

    final = json.loads((tiny_run / "final.json").read_text())
    assert 0 <= final["test_acc"] <= final["test_top5_acc"] <= 1
    assert main(["score", str(tiny_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5_acc"] == pytest.approx(final["test_top5_acc"])
