"""train.optimizer beyond SGD: torch's AdamW, timm's optimizers by name, timm's layer-wise lr decay. Each
checked against the library it wraps, built by hand from the model's own parameters."""

import pytest
import torch

from fixedhead import optim
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.errors import UserError
from fixedhead.models.classifier import build_model
from tiny import TINY, TINY_FLAGS


def _model(fixed=True, arch="fastnet-small"):
    config = make_config(TINY, {"model.fixed": fixed, "model.arch": arch})
    return build_model(config.model, 0, 10, 1 if arch == "fastnet-small" else 3, 16 if arch == "fastnet-small" else 32)


def _reference_groups(model, decay):
    """What the groups should be, from names: the head's own parameters undecayed (its vectors are
    buffers when fixed), every other parameter decayed."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    return [{"params": rest, "weight_decay": decay}, {"params": head, "weight_decay": 0.0}]


def _steps(model, optimizer, n=3):
    torch.manual_seed(0)
    images, labels = torch.randn(8, *_input(model)), torch.randint(0, 10, (8,))
    for _ in range(n):
        optimizer.zero_grad()
        model.loss(images, labels)[0].backward()
        optimizer.step()


def _input(model):
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return (conv.in_channels, 16, 16) if conv.in_channels == 1 else (conv.in_channels, 32, 32)


@pytest.mark.parametrize("name", ["adamw", "timm:lamb", "timm:adopt"])
def test_each_optimizer_steps_as_the_library_it_wraps(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    config = make_config(TINY, {"model.fixed": True, "train.optimizer": name, "train.lr": 0.01,
                                "train.weight_decay": 0.05, "train.momentum": 0.8, "train.beta2": 0.99})
    ours, reference = _model(), _model()
    vectors = ours.head.weight.clone()
    optimizer = optim.make_optimizer(ours, config.train)
    if name == "adamw":
        by_hand = torch.optim.AdamW(_reference_groups(reference, 0.05), lr=0.01, betas=(0.8, 0.99))
    else:
        from timm.optim import create_optimizer_v2

        by_hand = create_optimizer_v2(_reference_groups(reference, 0.05), opt=name[5:], lr=0.01, momentum=0.8)
        assert type(optimizer) is type(by_hand)
    _steps(ours, optimizer)
    _steps(reference, by_hand)
    for (n, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), n
    assert torch.equal(ours.head.weight, vectors)  # fixed vectors: in no optimizer, never moved
    assert all(p is not ours.head.weight for g in optimizer.param_groups for p in g["params"])


def test_layer_decay_scales_each_parameter_as_timm_does():
    pytest.importorskip("timm")
    from timm.optim import param_groups_layer_decay

    model = _model(arch="timm:resnet10t")
    config = make_config(TINY, {"model.fixed": True, "train.layer_decay": 0.7, "train.lr": 0.1,
                                "train.optimizer": "adamw"})
    lr_of = {id(p): g["lr"] for g in optim.make_optimizer(model, config.train).param_groups for p in g["params"]}
    scale = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, 0.0, layer_decay=0.7) for p in g["params"]}
    assert lr_of.keys() == {id(p) for p in model.parameters()} and len(set(scale.values())) > 2
    for p in model.parameters():
        assert lr_of[id(p)] == pytest.approx(0.1 * scale.get(id(p), 1.0))


@pytest.mark.parametrize("overrides, message", [
    ({"train.optimizer": "timm:lamd"}, "timm has no optimizer 'lamd'.*did you mean timm:lamb"),
    ({"train.optimizer": "adamw", "train.decoupled": True}, "train.decoupled .*leave train.decoupled false"),
])
def test_an_optimizer_this_installation_cannot_build_is_one_line(overrides, message):
    pytest.importorskip("timm")
    with pytest.raises(UserError, match=message):
        make_config(TINY, overrides)


def test_layer_decay_on_a_model_without_layers_is_one_line():
    config = make_config(TINY, {"train.layer_decay": 0.7})
    with pytest.raises(UserError, match="train.layer_decay needs a model that says which layer"):
        optim.make_optimizer(_model(), config.train)


def test_train_with_adamw_from_the_cli(tmp_path, capsys):
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--set", "train.optimizer=adamw", "--lr", "0.003", "--set", "train.weight_decay=0.05"]) == 0
    assert "test accuracy" in capsys.readouterr().out
