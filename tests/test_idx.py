import gzip

import numpy as np
import pytest

from fixedhead import data
from fixedhead.data import idx
from fixedhead.errors import UserError
from formats import write_idx

FASHION = idx.SYSTEM_DIR / "fashion-mnist"


@pytest.fixture(autouse=True)
def _no_system_copy(monkeypatch, tmp_path):
    """Tests see only their own files unless they ask for the system copy."""
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "system")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_read_pixel_exactly(tmp_path, gz):
    images, labels = write_idx(tmp_path / "fm", "test", n=7, gz=gz)
    loaded = data.load("fashion-mnist", tmp_path / "fm", "test")
    assert loaded.images.shape == (7, 1, 28, 28)
    assert np.array_equal(loaded.images[:, 0].numpy(), images)
    assert loaded.labels.tolist() == labels.tolist() and loaded.classes[9] == "Ankle boot"


def test_lookup_order_data_dir_then_system_folder(tmp_path, monkeypatch):
    system_images, _ = write_idx(tmp_path / "system" / "fashion-mnist", "test", seed=1)
    mine, _ = write_idx(tmp_path / "mine" / "FashionMNIST" / "raw", "test", seed=2)  # torchvision's layout
    assert np.array_equal(data.load("fashion-mnist", tmp_path / "mine", "test").images[:, 0].numpy(), mine)
    assert np.array_equal(data.load("fashion-mnist", None, "test").images[:, 0].numpy(), system_images)
    with pytest.raises(UserError, match="'mnist' not found in .*elsewhere.*fixedhead data download mnist"):
        data.load("mnist", tmp_path / "elsewhere", "test")
    (tmp_path / "system" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="not found in .*apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", None, "test")


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + gzip.decompress(p.read_bytes())[4:])), "bad magic number"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])), "header says"),
    (lambda p: p.write_bytes(p.read_bytes()[:30]), "not a readable IDX file"),
])
def test_damaged_idx_files_are_named(tmp_path, damage, match):
    write_idx(tmp_path / "fm", "test")
    damage(tmp_path / "fm" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(UserError, match=f"t10k-images-idx3-ubyte.gz.*{match}|{match}.*t10k-images"):
        data.load("fashion-mnist", tmp_path / "fm", "test")


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx(tmp_path / "fm", "test", n=5)
    write_idx(tmp_path / "other", "test", n=4)
    name = "t10k-images-idx3-ubyte.gz"
    (tmp_path / "fm" / name).write_bytes((tmp_path / "other" / name).read_bytes())
    with pytest.raises(UserError, match="holds 4 images but .* holds 5 labels"):
        data.load("fashion-mnist", tmp_path / "fm", "test")


@pytest.mark.skipif(not FASHION.exists(), reason=f"{FASHION} is absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIR", FASHION.parent)
    train, test = data.load("fashion-mnist", None, "train"), data.load("fashion-mnist", None, "test")
    assert len(train) == 60000 and len(test) == 10000 and train.images.shape[1:] == (1, 28, 28)
    assert np.bincount(train.labels.numpy()).tolist() == [6000] * 10
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
