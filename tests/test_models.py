import numpy as np
import pytest
import torch

from fixedhead import ENCODERS, ClassHead, Classifier, build_encoder, swap_head
from fixedhead.errors import UserError


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_maps_images_to_num_features(name):
    torch.manual_seed(0)
    encoder = build_encoder(name, in_channels=3).eval()
    features = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, encoder.num_features)


@pytest.mark.parametrize("size", [16, 64, 96])
def test_resnet18_works_at_other_sizes_with_512_features(size):
    encoder = build_encoder("resnet18", image_size=size).eval()
    assert encoder(torch.randn(1, 3, size, size)).shape == (1, 512)


def test_resnet18_authors_pooling_gives_4608_features_at_96px():
    encoder = build_encoder("resnet18", image_size=96, pool="authors").eval()
    assert encoder.num_features == 4608
    assert encoder(torch.randn(1, 3, 96, 96)).shape == (1, 4608)


def test_grayscale_input_channels():
    encoder = build_encoder("fastnet", in_channels=1).eval()
    assert encoder(torch.randn(2, 1, 16, 16)).shape == (2, 256)


def test_unknown_encoder_lists_the_registry():
    with pytest.raises(UserError, match="resnet18, resnet20, vgg16"):
        build_encoder("resnet1000")


def test_classifier_features_then_head():
    encoder = build_encoder("resnet20").eval()
    model = Classifier(encoder, ClassHead(encoder.num_features, 10, "cosine", fixed=True))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)))


def test_swap_head_on_torchvision_resnet():
    torchvision = pytest.importorskip("torchvision")
    model = swap_head(torchvision.models.resnet18(weights=None), num_classes=7, similarity="cosine", fixed=True)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.forward_features(x).shape == (2, 512)
    assert model(x).shape == (2, 7)
    assert "head.weight" in model.state_dict()
    assert all(p is not model.head.weight for p in model.parameters())


def test_swap_head_on_torchvision_vgg_keeps_class_count():
    torchvision = pytest.importorskip("torchvision")
    model = swap_head(torchvision.models.vgg11(weights=None), fixed=True).eval()
    assert model.head.num_classes == 1000 and model.head.num_features == 4096


def test_swap_head_on_timm_model():
    timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install fixedhead[timm])")
    model = swap_head(timm.create_model("resnet18", pretrained=False, num_classes=5), similarity="dot", fixed=True)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 512)
    assert model(x).shape == (2, 5)
    vit = swap_head(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
                                      patch_size=8), similarity="cosine").eval()
    assert vit(x).shape == (2, 3) and vit.forward_features(x).shape == (2, vit.head.num_features)


def test_swap_head_refuses_model_without_linear():
    with pytest.raises(UserError, match="no nn.Linear"):
        swap_head(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))


def test_global_max_pool_backward_survives_compiled_bf16():
    # Regression: with amax, a compiled bf16 graph compared a float32 recomputation of GELU's output with
    # the bf16-rounded maximum, found no equal element and divided 0 by 0 (NaN weights after one step).
    from fixedhead.models.encoders import GlobalPool

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.GELU(), GlobalPool("max"))
    x = torch.randn(16, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.compile(module)(x.bfloat16())
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    # The gradient reaches exactly one position per (image, channel): the one max(dim) recorded.
    assert ((x.grad != 0).flatten(2).sum(2) == 1).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_global_max_pool_matches_numpy_and_keeps_the_layout_in_backward(channels_last):
    # numpy's oracle: the maximum over space, and the gradient at its first position in raster order
    # (np.argmax's), which ties in a bf16 map make matter.
    from fixedhead.models.encoders import GlobalPool

    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(5, 6, 3, 3)).astype(np.float32)  # small integers: many ties
    x = torch.tensor(values)
    x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_(True)
    inner = x * 1  # not a leaf: a leaf's .grad is laid out like the leaf whatever backward produced
    grads = []
    inner.register_hook(grads.append)
    out = GlobalPool("max")(inner)
    weights = rng.normal(size=(5, 6)).astype(np.float32)
    (out * torch.tensor(weights)).sum().backward()
    (grad,) = grads
    flat = values.reshape(5, 6, 9)
    np.testing.assert_array_equal(out.detach().numpy(), flat.max(2))
    expected = np.zeros_like(flat)
    np.put_along_axis(expected, flat.argmax(2)[..., None], weights[..., None], axis=2)
    np.testing.assert_array_equal(grad.numpy(), expected.reshape(values.shape))
    # The gradient comes back in the input's layout, so the layers below keep theirs in backward.
    assert grad.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_the_bn_neck_gives_signed_features_that_can_pass_the_nonnegative_ceiling():
    from fixedhead import metrics
    from fixedhead.config import make_config
    from fixedhead.models.classifier import Neck, build_model

    config = make_config({"model.arch": "fastnet-small", "model.neck": "bn", "model.similarity": "cosine",
                          "model.fixed": True})
    model = build_model(config.model, 0, 10, 1, 16)
    assert isinstance(model.encoder, Neck) and model.head.num_features == 128
    model.train()
    features = model.forward_features(torch.rand(64, 1, 16, 16)).detach()
    assert 0.3 < (features < 0).double().mean() < 0.7  # centred per feature: about half negative
    plain = build_model(make_config({"model.arch": "fastnet-small"}).model, 0, 10, 1, 16)
    assert (plain.forward_features(torch.rand(8, 1, 16, 16)) < -0.2).sum() == 0  # GELU's minimum is -0.17
    # A feature along w itself is signed and reaches cos 1, which no non-negative feature can.
    w = model.head.vectors()
    classes = torch.arange(10)
    assert metrics.mean_cos_to_class(w.clone(), w, classes) == pytest.approx(1.0)
    assert metrics.cosine_ceiling(w.clone(), w, classes) == pytest.approx(1.0)
    assert metrics.cosine_ceiling(w.clamp_min(0), w, classes) < 0.8


def test_the_classifier_keeps_timms_contract():
    """forward_features -> forward_head -> forward; num_features, num_classes, get_classifier; reset_classifier
    builds a head of the same kind and settings (its vectors drawn anew from the same seed), 0 removes it; loss
    is plain cross-entropy of the logits for a ClassHead."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = Classifier(build_encoder("fastnet-small", in_channels=1),
                       ClassHead(128, 10, "cosine", fixed=True, scale=4.0, seed=3)).eval()
    x, labels = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    features = model.forward_features(x)
    assert features.shape == (4, model.num_features) == (4, 128) and model.num_classes == 10
    assert torch.equal(model(x), model.forward_head(features)) and torch.equal(model.forward_head(features, True), features)
    assert model.get_classifier() is model.head
    loss, predicted = model.loss(x, labels)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), labels))
    assert torch.equal(predicted, model(x).argmax(1))
    model.reset_classifier(5)
    assert model.num_classes == 5 and model(x).shape == (4, 5)
    assert (model.head.similarity, model.head.fixed, model.head.seed) == ("cosine", True, 3)
    assert model.head.scale.item() == pytest.approx(4.0)
    torch.testing.assert_close(model.head.weight, ClassHead(128, 5, "cosine", fixed=True, seed=3).weight)
    model.reset_classifier(0)
    assert model.num_classes == 0 and torch.equal(model(x), features)
