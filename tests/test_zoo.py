"""timm and torchvision models by name through the whole pipeline, and the Classifier answering timm's
hooks as the bare model does (timm itself is the oracle)."""

import json
import warnings

import numpy as np
import pytest
import torch
import yaml

from fixedhead.cli import main
from fixedhead.errors import UserError
from fixedhead.models.classifier import Classifier, bare_state_dict, build_encoder, swap_head
from fixedhead.runs import RunDir

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def test_library_models_go_through_sweep_analysis_and_report(tmp_path, capsys):
    experiment = {
        "name": "zoo", "base": {"data.name": "digits", "train.epochs": 1, "train.batch_size": 64},
        "variants": {"fixed": {"model.similarity": "cosine", "model.fixed": True, "model.scale": 8.0},
                     "learned": {"model.similarity": "cosine", "model.fixed": False, "model.scale": 8.0}},
        "grid": {"model.arch": ["timm:resnet10t", "torchvision:resnet18"]}, "seeds": 1, "after": ["analyze"],
        "report": {"rows": ["model.arch"], "columns": ["variant"], "metrics": ["test_acc", "spearman_rho"]},
    }
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "[1/4]" in err and "epoch 1/1" in err  # a sweep shows each run's epochs
    assert main(["report", str(tmp_path / "o")]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    for arch in ("timm:resnet10t", "torchvision:resnet18"):
        assert arch in report
    meta = json.loads(next((tmp_path / "o").glob("fixed__arch=timm-*")).joinpath("meta.json").read_text())
    assert meta["timm"] == timm.__version__
    analysis = json.loads(RunDir(next((tmp_path / "o").glob("learned__arch=torchvision-*"))).analysis_path.read_text())
    assert -1 <= analysis["spearman_rho"] <= 1


def test_grey_images_and_sizes_come_from_the_data():
    for arch in ("timm:resnet10t", "torchvision:resnet18", "torchvision:googlenet"):
        encoder = build_encoder(arch, in_channels=1, image_size=32)
        encoder.train()
        assert encoder(torch.randn(2, 1, 32, 32)).shape == (2, encoder.num_features)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_models_whose_default_init_will_change_get_their_published_init_by_name(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision's FutureWarning about the default init would fail here
        torch.manual_seed(0)
        encoder = build_encoder(f"torchvision:{name}", in_channels=3, image_size=80)
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None, init_weights=True)
    ours = dict(encoder.named_parameters())
    for key, value in reference.named_parameters():
        if key in ours:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
    assert sum(key in ours for key, _ in reference.named_parameters()) > 50


@pytest.mark.parametrize("arch, words", [
    ("timm:convnext_atoo", ["unknown timm model", "timm:convnext_atto", "timm.list_models('*convnext*')"]),
    ("torchvision:resnet500", ["unknown torchvision model", "torchvision.models.list_models()"]),
    ("timm:vit_tiny_patch16_224", ["cannot take 1x16x16", "data.image_size=224"]),
    ("torchvision:vit_b_16", ["cannot take 1x16x16", "global pooling"]),
])
def test_a_model_that_cannot_be_used_is_refused_in_one_line(tmp_path, capsys, arch, words):
    assert main(["train", "--data", "digits", "--arch", arch, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "r").exists()


def test_pretrained_weights_offline_are_one_line(tmp_path, capsys, monkeypatch):
    from fixedhead.models import zoo

    monkeypatch.setattr(zoo, "_reachable", lambda host, timeout_s=3.0: False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for arch in ("torchvision:resnet18", "timm:resnet10t"):
        assert main(["train", "--data", "digits", "--arch", arch, "--pretrained", "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not in the local cache" in err and "model.pretrained=false" in err, err
    assert main(["train", "--data", "digits", "--pretrained", "--out", str(tmp_path / "r")]) == 2
    assert "timm:NAME and torchvision:NAME" in capsys.readouterr().err


def _vit():
    return timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8)


def test_timm_optimizer_factory_sees_the_wrapped_vit_as_the_bare_one():
    """weight decay per parameter from timm's own factory: pos_embed and cls_token exempt on both."""
    torch.manual_seed(0)
    bare = _vit()
    wrapped = swap_head(_vit(), similarity="cosine", fixed=True)

    def decays(model):
        from timm.optim import create_optimizer_v2

        groups = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=0.05).param_groups
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)].removeprefix("encoder."): g["weight_decay"] for g in groups for p in g["params"]}

    expected = {k: v for k, v in decays(bare).items() if not k.startswith("head.")}
    assert decays(wrapped) == expected and expected["pos_embed"] == 0 and expected["blocks.0.attn.qkv.weight"] == 0.05


@pytest.mark.parametrize("build", [_vit, lambda: timm.create_model("convnext_atto", num_classes=10)])
def test_layer_decay_groups_match_the_bare_model(build):
    from timm.models import group_parameters

    bare = build()
    wrapped = swap_head(build(), similarity="dot", fixed=True)
    expected = group_parameters(bare, bare.group_matcher(coarse=False), reverse=True)
    got = group_parameters(wrapped, wrapped.group_matcher(coarse=False), reverse=True)
    got = {k.removeprefix("encoder."): v for k, v in got.items()}
    assert got == {k: v for k, v in expected.items() if k not in ("head.weight", "head.bias", "head.fc.weight",
                                                                  "head.fc.bias")}


def test_data_config_and_grad_checkpointing_reach_the_encoder():
    bare = _vit()
    wrapped = swap_head(_vit(), similarity="cosine", fixed=True)
    resolve = timm.data.resolve_data_config
    assert resolve(model=wrapped) == resolve(model=bare) and wrapped.default_cfg == bare.default_cfg
    wrapped.set_grad_checkpointing(True)
    assert wrapped.encoder.grad_checkpointing
    plain = Classifier(torch.nn.Flatten(), torch.nn.Identity())
    assert not hasattr(plain, "no_weight_decay") and not hasattr(plain, "pretrained_cfg")


def test_our_optimizer_honours_no_weight_decay():
    from fixedhead.config import TrainConfig
    from fixedhead.optim import make_optimizer

    model = swap_head(_vit(), similarity="dot", fixed=False)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=5e-4))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay[id(named["encoder.pos_embed"])] == 0 and decay[id(named["encoder.cls_token"])] == 0
    assert decay[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 5e-4 and decay[id(named["head.weight"])] == 5e-4


@pytest.mark.parametrize("name, size", [("inception_v3", 80), ("googlenet", 32)])
def test_models_with_auxiliary_outputs_train_on_their_main_output(name, size):
    model = swap_head(torchvision.models.get_model(name, weights=None, init_weights=False), num_classes=5)
    model.train()
    logits = model(torch.randn(2, 3, size, size))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 5)
    loss, _ = model.loss(torch.randn(2, 3, size, size), torch.tensor([0, 1]))
    loss.backward()


@pytest.mark.parametrize("make, classifier", [
    (lambda: timm.create_model("resnet10t", num_classes=7), "fc"),
    (lambda: torchvision.models.resnet18(num_classes=7), "fc"),
])
def test_a_wrapped_checkpoint_loads_back_into_the_bare_model(make, classifier):
    torch.manual_seed(0)
    wrapped = swap_head(make(), similarity="dot", fixed=True, seed=3)
    for module in wrapped.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
    encoder_weights, head_weights = bare_state_dict(wrapped.state_dict())
    bare = make()
    missing, unexpected = bare.load_state_dict(encoder_weights, strict=False)
    assert sorted(missing) == [f"{classifier}.bias", f"{classifier}.weight"] and not unexpected
    with torch.no_grad():
        getattr(bare, classifier).weight.copy_(head_weights["weight"])
        getattr(bare, classifier).bias.zero_()
    wrapped.eval(), bare.eval()
    x = torch.randn(3, 3, 32, 32)
    np.testing.assert_allclose(bare(x).detach().numpy(), wrapped(x).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_config_refuses_an_unknown_library_before_anything_is_built():
    from fixedhead.config import make_config

    with pytest.raises(UserError, match="unknown timm model"):
        make_config({"model.arch": "timm:no_such_model_at_all"})
    with pytest.raises(UserError, match="unknown arch"):
        make_config({"model.arch": "keras:resnet"})


def test_a_torchvision_builder_downloads_no_backbone_unless_pretrained_is_asked(monkeypatch):
    """Detection and segmentation builders default weights_backbone to ImageNet weights: with pretrained off
    they get None, so nothing is fetched (a download here would fail, offline, or hang)."""
    import torchvision

    from fixedhead.models import zoo

    calls = []
    real = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, **kw: calls.append(kw) or real(name, **kw))
    zoo._torchvision_create(torchvision.models, "fcn_resnet50", pretrained=False)
    assert calls == [{"weights": None, "weights_backbone": None}]


def test_swap_head_on_a_transformers_vit_works_end_to_end():
    transformers = pytest.importorskip("transformers")
    from fixedhead import swap_head

    config = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=10, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(config).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # what the replaced classifier saw: the final layer norm's CLS token
        cls = vit.vit(pixel_values=images).last_hidden_state[:, 0]
    model = swap_head(vit, fixed=True, similarity="cosine", scale=4.0).eval()
    with torch.no_grad():
        logits = model(images)
    expected = 4.0 * torch.nn.functional.normalize(cls, dim=1) @ model.head.vectors().T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    loss, _ = model.train().loss(images, torch.tensor([0, 1, 2]))
    loss.backward()
    assert vit.vit.embeddings.patch_embeddings.projection.weight.grad is not None
