"""Class weights and MixUp / CutMix in the training loss, against scikit-learn's rule, the weighted
cross-entropy written out, and torchvision's transforms."""

import numpy as np
import pytest
import torch
from torch import nn

from fixedhead.config import make_config
from fixedhead.errors import UserError
from fixedhead.models.classifier import build_model
from fixedhead.training.epoch import LossOf, class_weight, make_mix
from fixedhead.training.fit import fit
from interrupts import fit_interrupted, same_result
from tiny import TINY


def _model():
    return build_model(make_config(TINY, {"model.fixed": True}).model, 0, 10, 1, 16).train()


def test_balanced_class_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.tensor([0] * 50 + [1] * 10 + [2] * 5 + list(range(3, 10)) * 2)
    expected = compute_class_weight("balanced", classes=np.arange(10), y=labels.numpy())
    counts = torch.bincount(labels, minlength=10).tolist()
    np.testing.assert_allclose(class_weight("balanced", counts, "cpu").numpy(), expected, rtol=1e-6)
    assert class_weight("none", counts, "cpu") is None
    assert class_weight("balanced", [2, 1, 0], "cpu")[2] == 0  # a class without images weighs nothing


def test_the_weighted_loss_is_the_weighted_mean_of_the_cross_entropies():
    model, generator = _model(), torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    weight = torch.rand(10, generator=generator) + 0.1
    loss, _ = LossOf(model, class_weight=weight)(images, labels)
    with torch.no_grad():
        log_p = torch.log_softmax(model(images).double(), 1).numpy()
    per_image = -log_p[np.arange(16), labels.numpy()]
    w = weight.double().numpy()[labels.numpy()]
    assert loss.item() == pytest.approx((w * per_image).sum() / w.sum(), rel=1e-5)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mixed_batches_are_torchvisions_and_the_loss_their_soft_cross_entropy(mixup, cutmix):
    from torchvision.transforms import v2

    model, generator = _model(), torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    torch.manual_seed(3)
    loss, predicted = LossOf(model, mix=make_mix(mixup, cutmix, 10))(images, labels)
    torch.manual_seed(3)
    transform = v2.MixUp(alpha=mixup, num_classes=10) if mixup else v2.CutMix(alpha=cutmix, num_classes=10)
    mixed, targets = transform(images, labels)
    assert targets.shape == (16, 10) and not torch.equal(mixed, images)
    with torch.no_grad():
        log_p = torch.log_softmax(model(mixed).double(), 1)
    assert loss.item() == pytest.approx(-(targets.double() * log_p).sum(1).mean().item(), rel=1e-5)
    assert torch.equal(predicted, log_p.argmax(1))


def test_a_blockwise_head_is_refused_a_loss_that_needs_logits():
    model = nn.Module()
    model.head = nn.Module()
    model.head.blockwise = True
    with pytest.raises(UserError, match="need the logits formed"):
        LossOf(model, mix=make_mix(0.2, 0.0, 10))


def test_a_run_with_mixup_cutmix_and_class_weights_resumes_exactly(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.epochs": 2, "train.mixup": 0.2, "train.cutmix": 1.0,
                                "train.class_weights": "balanced"})
    fit(config, tmp_path / "straight", verbose=False)
    fit_interrupted(config, tmp_path / "resumed", 1, monkeypatch)
    fit(config, tmp_path / "resumed", resume=True, verbose=False)
    assert same_result(tmp_path / "straight", tmp_path / "resumed")


def test_logit_adjustment_adds_tau_log_prior_in_training_only():
    from fixedhead.training.epoch import log_prior

    model, generator = _model(), torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    train_labels = torch.tensor([0] * 40 + [1] * 20 + list(range(2, 10)) * 5)
    prior = log_prior("logit-adjusted", 1.5, torch.bincount(train_labels, minlength=10).tolist(), "cpu")
    step = LossOf(model, loss="logit-adjusted", log_prior=prior).train()
    loss, predicted = step(images, labels)
    counts = np.bincount(train_labels.numpy(), minlength=10)
    with torch.no_grad():
        logits = model(images).double().numpy()
    adjusted = logits + 1.5 * np.log(counts / counts.sum())
    log_p = adjusted - np.log(np.exp(adjusted).sum(1, keepdims=True))
    assert loss.item() == pytest.approx(-log_p[np.arange(16), labels.numpy()].mean(), rel=1e-5)
    assert torch.equal(predicted, torch.from_numpy(logits.argmax(1)))  # predictions from the plain logits
    step.eval()
    with torch.no_grad():
        logits = model(images).double().numpy()  # eval mode: batch norm's running statistics
    plain = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))[np.arange(16), labels.numpy()].mean()
    assert step(images, labels)[0].item() == pytest.approx(plain, rel=1e-5)  # evaluation: no adjustment


def test_dot_regression_is_half_the_squared_gap_of_the_cosine_to_one():
    model, generator = _model(), torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 1, 16, 16, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    loss, _ = LossOf(model, loss="dot-regression")(images, labels)
    with torch.no_grad():
        features = model.forward_features(images).double().numpy()
    vectors = model.head.weight.double().numpy()
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = vectors[labels.numpy()] / np.linalg.norm(vectors[labels.numpy()], axis=1, keepdims=True)
    assert loss.item() == pytest.approx(0.5 * (((f * w).sum(1) - 1) ** 2).mean(), rel=1e-5)
    with pytest.raises(UserError, match="dot-regression .*needs model.fixed"):
        make_config(TINY, {"train.loss": "dot-regression", "model.fixed": False})
