"""fit() on the user's own torch Datasets (a torchvision dataset, tensors or PIL images), instead of a
dataset the config names."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from fixedhead.config import make_config
from fixedhead.data import from_dataset
from fixedhead.errors import UserError
from fixedhead.training.fit import fit
from tiny import TINY


class Pictures(torch.utils.data.Dataset):
    """Grey PIL images whose brightness gives the class, with names, as torchvision datasets have."""

    classes = ["dark", "mid", "light"]

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.labels = rng.integers(0, 3, n)
        self.images = [Image.fromarray((40 + 80 * y + rng.integers(0, 30, (12, 12))).astype(np.uint8))
                       for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_fit_trains_on_given_datasets_and_says_so_in_the_run(tmp_path):
    final = fit(make_config(TINY, {"train.epochs": 3, "train.batch_size": 32}), tmp_path / "run", verbose=False,
                train_data=Pictures(192, 0), test_data=Pictures(60, 1))
    assert final["num_test"] == 60 and final["test_acc"] > 0.8  # brightness is easy
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["classes"] == ["dark", "mid", "light"]
    assert "name: python" in (tmp_path / "run" / "config.yaml").read_text()


def test_float_tensors_in_0_1_become_the_same_uint8_images():
    pixels = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 0, 1, 1])
    got = from_dataset(TensorDataset(pixels.float() / 255, labels))
    assert torch.equal(got.images, pixels) and got.classes == ["0", "1"]
    with pytest.raises(UserError, match="outside \\[0, 1\\]"):
        from_dataset(TensorDataset(pixels.float() - 128, labels))


def test_given_data_must_come_in_pairs_and_a_python_run_is_not_scored_from_files(tmp_path, capsys):
    from fixedhead.cli import main

    with pytest.raises(UserError, match="both datasets or neither"):
        fit(make_config(TINY), tmp_path / "x", train_data=Pictures(10, 0))
    fit(make_config(TINY, {"train.epochs": 1, "train.batch_size": 32}), tmp_path / "run", verbose=False,
        train_data=Pictures(64, 0), test_data=Pictures(20, 1))
    assert main(["score", str(tmp_path / "run")]) == 2
    assert "given from Python" in capsys.readouterr().err


def test_a_dataset_of_mappings_as_hugging_face_gives_them_is_read_with_its_class_names():
    class Labels:
        names = ["cat", "dog"]

    class Mappings(torch.utils.data.Dataset):  # what datasets.load_dataset("imagefolder", ...)["train"] yields
        features = {"image": object(), "label": Labels()}

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": Image.fromarray(np.full((6, 6, 3), 60 * i, np.uint8)), "label": i % 2}

    got = from_dataset(Mappings())
    assert got.classes == ["cat", "dog"] and got.images.shape == (4, 3, 6, 6) and got.labels.tolist() == [0, 1, 0, 1]
    assert got.images[3].max().item() == 180
    with pytest.raises(UserError, match="mapping without an image"):
        from_dataset([{"pixels": 1, "label": 0}])


def test_a_hugging_face_image_folder_dataset_trains_as_the_same_images_from_files(tmp_path, image_folder):
    """datasets.load_dataset("imagefolder", data_dir=...) from a local folder, given to fit: the same images,
    labels and class names as fixedhead's own reading of that folder."""
    datasets = pytest.importorskip("datasets")
    from fixedhead.data import load

    splits = datasets.load_dataset("imagefolder", data_dir=str(image_folder), cache_dir=str(tmp_path / "hf"))
    ours = load("imagefolder", image_folder, "train")
    given = from_dataset(splits["train"])
    assert given.classes == ours.classes
    order = lambda s: sorted(zip(s.labels.tolist(), s.images.flatten(1).tolist()))  # noqa: E731 (files' order may differ)
    assert order(given) == order(ours)
    final = fit(make_config(TINY, {"train.epochs": 1, "train.batch_size": 6}), tmp_path / "run", verbose=False,
                train_data=splits["train"], test_data=splits["test"])
    from fixedhead.evaluation.trained import load_trained

    saved = json.loads((tmp_path / "run" / "final.json").read_text())
    assert saved["train_class_counts"] == torch.bincount(ours.labels).tolist() and saved["num_test"] == 18
    assert load_trained(tmp_path / "run").classes == ours.classes and saved["test_acc"] == final["test_acc"]
