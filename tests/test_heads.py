import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixedhead import ClassHead, class_vectors
from fixedhead.errors import UserError
from fixedhead.heads.class_head import INITS


@pytest.mark.parametrize("scale", [1.0, 1 / 9])
def test_dot_logits_match_plain_formula(scale):
    head = ClassHead(7, 4, "dot", bias=True, seed=3, scale=scale)
    with torch.no_grad():
        head.bias.copy_(torch.arange(4.0))
    features = torch.randn(5, 7)
    expected = scale * features.numpy() @ head.weight.detach().numpy().T + np.arange(4.0)
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixed", [False, True])
def test_cosine_logits_match_plain_formula(fixed):
    head = ClassHead(6, 5, "cosine", fixed=fixed, scale=3.5, seed=1)
    with torch.no_grad():  # a learned head whose rows are no longer unit-norm must be normalised too
        if not fixed:
            head.weight.mul_(torch.linspace(0.5, 2.0, 5)[:, None])
    features = torch.randn(4, 6) * 10
    f = features.numpy().astype(np.float64)
    w = head.weight.detach().numpy().astype(np.float64)
    expected = 3.5 * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_fixed_weight_is_buffer_in_state_dict_and_unit_norm():
    head = ClassHead(16, 10, "dot", fixed=True)
    assert all(p is not head.weight for p in head.parameters())
    assert "weight" in head.state_dict() and "weight" in dict(head.named_buffers())
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))
    assert head.to(torch.float64).weight.dtype == torch.float64  # moved by .to()


def test_fixed_vectors_unchanged_after_optimizer_steps():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(8, 12)
    head = ClassHead(12, 5, "dot", fixed=True)
    before = head.weight.clone()
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(head(encoder(torch.randn(16, 8))), torch.randint(0, 5, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.equal(head.weight, before)
    assert head.weight.grad is None


def test_learned_weight_moves_and_is_a_parameter():
    head = ClassHead(4, 3, "cosine")
    assert any(p is head.weight for p in head.parameters())
    before = head.weight.detach().clone()
    loss = head(torch.randn(8, 4)).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(head.parameters(), lr=1.0).step()
    assert not torch.equal(head.weight.detach(), before)


@pytest.mark.parametrize("init", list(INITS))
def test_same_seed_same_vectors_whatever_the_global_rng(init):
    torch.manual_seed(1)
    a = class_vectors(8, 16, init, seed=5)
    torch.manual_seed(999)
    torch.randn(100)
    b = ClassHead(16, 8, init=init, seed=5, fixed=True).weight
    assert torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(8))


@pytest.mark.parametrize("init", ["random", "uniform-int", "orthogonal", "simplex", "hadamard"])
def test_different_seeds_differ(init):
    assert not torch.equal(class_vectors(6, 16, init, seed=0), class_vectors(6, 16, init, seed=1))


def test_uniform_int_is_the_authors_draw():
    generator = torch.Generator().manual_seed(4)
    raw = torch.randint(-100, 100, (5, 9), generator=generator).numpy().astype(np.float64)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(class_vectors(5, 9, "uniform-int", seed=4).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("num_classes,num_features", [(2, 2), (10, 10), (10, 512), (100, 128)])
def test_simplex_pairwise_cosine(num_classes, num_features):
    w = class_vectors(num_classes, num_features, "simplex", seed=2).double()
    gram = w @ w.T
    expected = np.full((num_classes, num_classes), -1.0 / (num_classes - 1))
    np.fill_diagonal(expected, 1.0)
    np.testing.assert_allclose(gram.numpy(), expected, atol=1e-6)


def test_simplex_refuses_too_few_features():
    with pytest.raises(UserError, match="simplex"):
        class_vectors(10, 5, "simplex")


@pytest.mark.parametrize("num_classes,num_features", [(10, 16), (10, 100), (64, 64), (3, 512)])
def test_hadamard_rows_orthogonal_and_distinct(num_classes, num_features):
    w = class_vectors(num_classes, num_features, "hadamard", seed=3).double()
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(num_classes), atol=1e-12)
    values = set(np.round(np.abs(w.numpy()[w.numpy() != 0]), 12))
    assert len(values) == 1  # +-1/sqrt(n) entries, as in a normalised Hadamard matrix


def test_hadamard_refuses_repeated_rows():
    with pytest.raises(UserError, match="hadamard.*num_classes <= 8"):
        class_vectors(10, 12, "hadamard")


def test_orthogonal_rows_when_fewer_classes_than_features():
    w = class_vectors(10, 32, "orthogonal").double()
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(10), atol=1e-6)


def test_orthogonal_with_more_classes_than_features_is_a_tight_frame():
    w = class_vectors(40, 8, "orthogonal").double()
    torch.testing.assert_close(w.norm(dim=1), torch.ones(40, dtype=torch.float64))
    assert np.linalg.matrix_rank(w.numpy()) == 8


@pytest.mark.parametrize("kwargs,match", [
    ({"scale": 0}, "scale"), ({"scale": -1.0, "similarity": "cosine"}, "scale"),
    ({"scale": float("nan"), "similarity": "cosine"}, "scale"), ({"init": "xavier"}, "random, uniform-int"),
    ({"similarity": "euclid"}, "dot, cosine"),
])
def test_bad_arguments_say_what_is_accepted(kwargs, match):
    with pytest.raises(UserError, match=match):
        ClassHead(8, 3, **kwargs)


def test_learned_scale_stays_positive_and_learns():
    head = ClassHead(4, 3, "cosine", fixed=True, scale=2.0, learn_scale=True)
    assert head.scale.item() == pytest.approx(2.0)
    optimizer = torch.optim.SGD(head.parameters(), lr=10.0)
    for _ in range(20):  # push S down hard: it must stay > 0
        loss = head(torch.randn(8, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert 0 < head.scale.item() < 2.0


@settings(max_examples=40, deadline=None)
@given(num_classes=st.integers(1, 40), num_features=st.integers(1, 40),
       scale=st.floats(0.01, 100), fixed=st.booleans(), batch=st.integers(1, 5))
def test_cosine_logits_bounded_by_scale_and_finite(num_classes, num_features, scale, fixed, batch):
    head = ClassHead(num_features, num_classes, "cosine", fixed=fixed, scale=scale)
    logits = head(torch.randn(batch, num_features) * 100)
    assert logits.shape == (batch, num_classes)
    assert torch.isfinite(logits).all()
    assert logits.abs().max().item() <= scale * (1 + 1e-5)


def test_cosine_logits_handle_zero_features():
    logits = ClassHead(5, 3, "cosine", fixed=True)(torch.zeros(2, 5))
    assert torch.isfinite(logits).all() and math.isclose(logits.abs().max().item(), 0.0)
