import json

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from fixedhead import fit
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.evaluation.corruptions import corrupt
from formats import write_cifar10, write_cifar101

TINY = {"model.arch": "fastnet-small", "train.epochs": 1, "train.batch_size": 8}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rob")
    images = write_image_folder(root / "images", per_class=8, size=24)
    fit(make_config(TINY, {"data.name": "imagefolder", "data.data_dir": str(images)}), root / "run", verbose=False)
    return root


def test_evaluate_writes_accuracy_per_corruption_and_severity(run, capsys):
    assert main(["robustness", str(run / "run"), "--severities", "1,5", "--generalization",
                 f"folder:{run / 'images' / 'test'}"]) == 0
    out = capsys.readouterr().out
    assert "| impulse_noise |" in out and "| defocus_blur |" in out
    result = json.loads((run / "run" / "evaluation.json").read_text())
    final = json.loads((run / "run" / "final.json").read_text())
    assert result["clean_acc"] == pytest.approx(final["test_acc"]) and result["num_test"] == 24
    jpeg = result["corruptions"]["jpeg_compression"]
    assert set(jpeg["acc"]) == {"1", "5"} and jpeg["mean_acc"] == pytest.approx(np.mean(list(jpeg["acc"].values())))
    assert jpeg["relative_drop"] == pytest.approx((result["clean_acc"] - jpeg["mean_acc"]) / result["clean_acc"])
    folder = result["generalization"][f"folder:{run / 'images' / 'test'}"]
    assert folder["num_images"] == 24 and folder["acc"] == pytest.approx(result["clean_acc"])
    assert (run / "run" / "evaluation.png").stat().st_size > 1000


def test_corrupted_accuracy_matches_a_direct_computation(run):
    from fixedhead.evaluation.robustness import evaluate_suite
    from fixedhead.evaluation.trained import load_trained

    result = evaluate_suite(run / "run", ["impulse_noise"], [3], seed=7)
    trained = load_trained(run / "run")
    from fixedhead import data

    test = data.load("imagefolder", run / "images", "test")
    x = corrupt(test.images, "impulse_noise", 3, seed=7).float() / 255
    mean, std = torch.tensor(trained.mean)[:, None, None], torch.tensor(trained.std)[:, None, None]
    with torch.no_grad():
        predicted = trained.model((x - mean) / std).argmax(1)
    expected = (predicted == test.labels).double().mean().item()
    assert result["corruptions"]["impulse_noise"]["acc"]["3"] == pytest.approx(expected)


def test_second_evaluation_comes_from_the_cache(run, monkeypatch):
    from fixedhead.evaluation import robustness

    robustness.evaluate_suite(run / "run", ["defocus_blur"], [2])
    monkeypatch.setattr(robustness, "corrupt", lambda *a, **k: pytest.fail("corrupted again"))
    robustness.evaluate_suite(run / "run", ["defocus_blur"], [2])


def test_cifar101_maps_onto_cifar10_classes(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=6)
    images, labels = write_cifar101(tmp_path / "c101", n=9)
    fit(make_config(TINY, {"data.name": "cifar10", "data.data_dir": str(tmp_path / "data")}), tmp_path / "r",
        verbose=False)
    assert main(["robustness", str(tmp_path / "r"), "--corruptions", "none",
                 "--generalization", f"cifar10.1@{tmp_path / 'c101'}"]) == 0
    result = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert result["generalization"][f"cifar10.1@{tmp_path / 'c101'}"]["num_images"] == 9


def test_export_cifar10c_layout(tmp_path, capsys):
    write_cifar10(tmp_path / "data", per_batch=3)
    assert main(["corrupt", "cifar10", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "c"),
                 "--corruptions", "jpeg_compression", "--preset", "cifar-c"]) == 0
    stacked = np.load(tmp_path / "c" / "jpeg_compression.npy")
    labels = np.load(tmp_path / "c" / "labels.npy")
    from fixedhead import data

    test = data.load("cifar10", tmp_path / "data", "test")
    assert stacked.shape == (15, 32, 32, 3) and labels.tolist() == test.labels.tolist() * 5
    expected = corrupt(test.images.permute(0, 2, 3, 1).numpy(), "jpeg_compression", 1, "cifar-c")
    assert np.array_equal(stacked[:3], expected)  # severity 1 first


@pytest.mark.parametrize("args,match", [
    (["--corruptions", "fog"], "unknown corruption 'fog'; choose all, none or any of"),
    (["--severities", "0-7"], "--severities takes a range like 1-5"),
    (["--preset", "imagenet-p"], "unknown preset 'imagenet-p'"),
    (["--generalization", "svhn"], "unknown generalisation set 'svhn'"),
])
def test_bad_input(run, capsys, args, match):
    code = main(["robustness", str(run / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


def test_grayscale_dataset_cannot_be_corrupted(tmp_path, capsys):
    fit(make_config(TINY, {"data.name": "digits"}), tmp_path / "d", verbose=False)
    code = main(["robustness", str(tmp_path / "d"), "--corruptions", "impulse_noise"])
    assert code == 2 and "corruptions need RGB images" in capsys.readouterr().err


def test_compare_draws_robustness_of_evaluated_runs(run, tmp_path, capsys):
    from fixedhead.evaluation.robustness import evaluate_suite

    evaluate_suite(run / "run", ["impulse_noise"], [1, 2])
    assert main(["compare", str(run / "run"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "accuracy_vs_severity.png").stat().st_size > 1000
