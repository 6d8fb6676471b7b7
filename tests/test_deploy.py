"""A run taken away: `fixedhead export` (ONNX, TorchScript, safetensors) gives the run's logits from raw
[0, 1] images, normalisation and cosine head included; `fixedhead predict` gives the top classes of image
files; torch.jit.script works on swap_head models."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fixedhead.cli import main
from fixedhead.evaluation.trained import load_trained
from tiny import TINY_FLAGS


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(out), "--similarity", "cosine", "--fixed",
                 "--scale", "8"]) == 0
    return out


def _run_logits(run, images):
    """The run's logits by hand: its classifier on images normalised with its saved statistics."""
    trained = load_trained(run, "cpu")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (trained.mean, trained.std))
    with torch.no_grad():
        return trained.model((images - mean) / std)


def _images(run, n=7):
    trained = load_trained(run, "cpu")
    return torch.rand(n, trained.in_channels, trained.image_size, trained.image_size,
                      generator=torch.Generator().manual_seed(0))


def _exported_logits(fmt, path, images, run):
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        return torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"images": images.numpy()})[0])
    if fmt == "torchscript":
        return torch.jit.load(str(path))(images)
    from safetensors.torch import load_file

    from fixedhead.evaluation.deploy import deployable

    model = deployable(load_trained(run, "cpu"))
    for tensor in model.state_dict().values():
        tensor.zero_()  # so that only the file's weights can give the logits
    model.load_state_dict(load_file(str(path)))
    return model(images)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_an_exported_model_gives_the_runs_logits(tmp_path, capsys, cosine_run, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    run = shutil.copytree(cosine_run, tmp_path / "run")
    assert main(["export", str(run), "--format", fmt]) == 0
    written = capsys.readouterr().out.split()[1]
    description = json.loads(open(written + ".json").read())
    assert description["classes"] == load_trained(run, "cpu").classes and description["input"] == [1, 16, 16]
    images = _images(run)
    with torch.no_grad():
        got = _exported_logits(fmt, written, images, run)
    torch.testing.assert_close(got, _run_logits(run, images), rtol=0, atol=1e-5)


def test_export_replaces_no_file_it_did_not_write_and_training_removes_its_exports(tmp_path, capsys, cosine_run):
    run = shutil.copytree(cosine_run, tmp_path / "run")
    weights = (run / "model.pt").read_bytes()
    assert main(["export", str(run), "--format", "torchscript", "--out", str(run / "model.pt")]) == 2
    assert "exists" in capsys.readouterr().err and (run / "model.pt").read_bytes() == weights
    assert main(["export", str(run), "--format", "keras"]) == 2
    assert "onnx, torchscript, safetensors" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    (run / "export" / "notes.md").write_text("mine")
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    assert [p.name for p in (run / "export").iterdir()] == ["notes.md"]  # the old weights' exports are gone


def test_predict_gives_the_top_classes_of_image_files(tmp_path, capsys, cosine_run):
    generator = np.random.default_rng(0)
    files = []
    for k, side in enumerate((16, 23)):  # one at the run's size, one resized
        files.append(tmp_path / f"{k}.png")
        Image.fromarray(generator.integers(0, 256, (side, side), dtype=np.uint8)).save(files[-1])
    assert main(["predict", str(cosine_run), *map(str, files), "--top-k", "3", "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # By hand: decoded as an image folder's images are (RGB, bilinear to the run's size), then one channel.
    decoded = [np.asarray(Image.open(f).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))[..., 0]
               for f in files]
    images = torch.from_numpy(np.stack(decoded)).float()[:, None] / 255
    probabilities = _run_logits(cosine_run, images).softmax(1)
    classes = load_trained(cosine_run, "cpu").classes
    for result, row in zip(results, probabilities):
        expected = row.topk(3)
        assert [e["class"] for e in result["top"]] == [classes[i] for i in expected.indices]
        assert [e["probability"] for e in result["top"]] == pytest.approx(expected.values.tolist(), abs=1e-6)


def test_predict_refuses_colour_images_for_a_grey_run_and_bounds_its_counts(tmp_path, capsys, cosine_run):
    colour = tmp_path / "c.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(colour)
    assert main(["predict", str(cosine_run), str(colour)]) == 2
    assert "colour images but the run was trained on 1-channel" in capsys.readouterr().err
    assert main(["predict", str(cosine_run), str(colour), "--top-k", "0"]) == 2
    assert "--top-k from 1" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["torchvision:resnet18", "timm:resnet10t"])
def test_torch_jit_script_works_on_swap_head_models(make):
    from fixedhead import swap_head

    library, name = make.split(":")
    if library == "timm":
        timm = pytest.importorskip("timm")
        model = timm.create_model(name, num_classes=10)
    else:
        import torchvision

        model = getattr(torchvision.models, name)(num_classes=10)
    model = swap_head(model, fixed=True, similarity="cosine", scale=4.0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.script(model)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), model(images))
