"""Starting from local weights (model.weights) and normalising as a pretrained library model was trained
(its data config): against the state dict written and timm's resolve_data_config."""

import pytest
import torch

from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.data.loaders import prepare
from fixedhead.errors import UserError
from fixedhead.models import zoo
from fixedhead.models.classifier import build_encoder
from tiny import TINY, TINY_FLAGS


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A timm resnet10t's weights as its library writes them: encoder tensors plus its own classifier."""
    pytest.importorskip("timm")
    torch.manual_seed(5)
    encoder = zoo.build("timm:resnet10t", 1, 16)
    state = {**encoder.state_dict(), "fc.weight": torch.randn(7, encoder.num_features), "fc.bias": torch.zeros(7)}
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "resnet10t.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "resnet10t.safetensors"))
    return folder, encoder.state_dict()


@pytest.mark.parametrize("name", ["resnet10t.pt", "resnet10t.safetensors"])
def test_local_weights_load_strictly_and_the_librarys_classifier_is_dropped(resnet_file, name):
    folder, expected = resnet_file
    torch.manual_seed(0)
    encoder = zoo.build("timm:resnet10t", 1, 16)
    assert not torch.equal(encoder.state_dict()["conv1.0.weight"], expected["conv1.0.weight"])
    zoo.load_encoder_weights(encoder, folder / name)
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in expected.items())


def test_weights_of_another_model_are_one_line(resnet_file, tmp_path, capsys):
    folder, _ = resnet_file
    wrong = {k: v for k, v in torch.load(folder / "resnet10t.pt", weights_only=True).items() if "layer4" not in k}
    torch.save(wrong, tmp_path / "short.pt")
    with pytest.raises(UserError, match="lacks the encoder's tensors"):
        zoo.load_encoder_weights(zoo.build("timm:resnet10t", 1, 16), tmp_path / "short.pt")
    code = main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--set", f"model.weights={folder / 'resnet10t.pt'}"])  # fastnet-small is not a resnet10t
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has tensors the encoder does not" in err
    assert not (tmp_path / "run").exists()


def test_a_run_starts_from_the_local_weights(resnet_file, tmp_path):
    from fixedhead.training.fit import fit

    folder, expected = resnet_file
    config = make_config(TINY, {"model.arch": "timm:resnet10t", "train.epochs": 0.1, "train.lr": 1e-12,
                                "train.weight_decay": 0.0, "model.weights": str(folder / "resnet10t.pt")})
    fit(config, tmp_path / "run", verbose=False)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    weight = "encoder.conv1.0.weight"
    torch.testing.assert_close(saved[weight], expected["conv1.0.weight"], rtol=0, atol=1e-6)


def test_a_pretrained_library_model_normalises_as_its_data_config_says():
    pytest.importorskip("timm")
    from timm.data import resolve_data_config

    from fixedhead.training.fit import _normalise_as_pretrained

    encoder = build_encoder("timm:resnet10t", 3, 32)  # its pretrained_cfg is there without the weights
    config = make_config(TINY)
    data = prepare(config.data, seed=0, batch_size=64, eval_batch_size=500, device="cpu")
    _normalise_as_pretrained(data, encoder)
    resolved = resolve_data_config({}, model=encoder)
    grey = sum(resolved["mean"]) / 3  # digits has one channel: the colour channels' mean
    assert data["mean"] == pytest.approx([grey]) and data["test"].mean.item() == pytest.approx(grey * 255)
    with pytest.raises(UserError, match="model.weights and model.pretrained"):
        make_config(TINY, {"model.pretrained": True, "model.arch": "timm:resnet10t", "model.weights": "w.pt"})


def test_a_pretrained_library_models_input_size_is_read_without_building_it():
    timm = pytest.importorskip("timm")
    from timm.data import resolve_data_config
    from torchvision.models import ResNet18_Weights

    expected = resolve_data_config({}, model=timm.create_model("resnet10t", pretrained=False))["input_size"][-1]
    assert zoo.pretrained_input_size("timm:resnet10t") == expected
    assert zoo.pretrained_input_size("torchvision:resnet18") == ResNet18_Weights.DEFAULT.transforms().crop_size[0]
    assert zoo.pretrained_input_size("fastnet") is None


def test_fine_tuning_a_pretrained_model_resizes_to_its_input_size_and_the_run_records_it(tmp_path, monkeypatch, capsys):
    """--pretrained with no data.image_size: the run trains at the side the model was pretrained at,
    recorded for scoring, predict and export; a data.image_size given is kept. (The weights are not
    downloaded: timm builds the model as it would, with its pretrained config, from random weights.)"""
    timm = pytest.importorskip("timm")
    from torch.utils.data import TensorDataset

    from fixedhead.evaluation.trained import load_trained
    from fixedhead.training.fit import fit

    monkeypatch.setattr(zoo, "_timm_create", lambda library, name, pretrained, channels: timm.create_model(
        name, pretrained=False, num_classes=0, in_chans=channels))
    side = zoo.pretrained_input_size("timm:resnet10t")
    images = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8)
    labels = torch.arange(12) % 2
    train = TensorDataset(images, labels)
    config = make_config(TINY, {"model.arch": "timm:resnet10t", "model.pretrained": True, "train.epochs": 1,
                                "train.batch_size": 6})
    fit(config, tmp_path / "run", train_data=train, test_data=train)
    assert f"pretrained on {side} px images" in capsys.readouterr().err
    trained = load_trained(tmp_path / "run")
    assert trained.image_size == side and trained.config.data.image_size == side
    chosen = make_config(TINY, {"model.arch": "timm:resnet10t", "model.pretrained": True, "train.epochs": 1,
                                "train.batch_size": 6, "data.image_size": 24})
    fit(chosen, tmp_path / "chosen", train_data=train, test_data=train, verbose=False)
    assert load_trained(tmp_path / "chosen").image_size == 24
