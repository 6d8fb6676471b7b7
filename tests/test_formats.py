import pickle

import numpy as np
import pytest

from fixedhead import data
from fixedhead.errors import UserError
from formats import write_cifar10, write_cifar100, write_cifar101, write_stl10, write_tinyimagenet


def test_cifar10_pickles_read_pixel_exactly(tmp_path):
    written = write_cifar10(tmp_path)
    train = data.load("cifar10", tmp_path, "train")
    expected = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    assert np.array_equal(train.images.numpy(), expected)
    assert train.labels.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    test = data.load("cifar10", tmp_path / "cifar-10-batches-py", "test")  # the folder itself works too
    assert np.array_equal(test.images.numpy(), written["test_batch"][0])


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_cifar100(tmp_path)
    fine = data.load("cifar100", tmp_path, "test")
    coarse = data.load("cifar100", tmp_path, "test", variant="coarse")
    assert np.array_equal(fine.images.numpy(), written["test"][0])
    assert fine.labels.tolist() == written["test"][1] and len(fine.classes) == 100
    assert coarse.labels.tolist() == written["test"][2] and coarse.classes[0] == "coarse0"
    with pytest.raises(UserError, match="accepted: fine, coarse"):
        data.load("cifar100", tmp_path, "test", variant="medium")


def test_cifar101_is_test_only_with_cifar10_classes(tmp_path):
    images, labels = write_cifar101(tmp_path / "c101")
    v4_images, _ = write_cifar101(tmp_path / "c101", n=5, version="v4", seed=1)
    test = data.load("cifar10.1", tmp_path / "c101", "test")
    assert np.array_equal(test.images.numpy(), images.transpose(0, 3, 1, 2))
    assert test.labels.tolist() == labels.tolist() and test.classes[9] == "truck"
    assert np.array_equal(data.load("cifar10.1", tmp_path / "c101", "test", variant="v4").images.numpy(),
                          v4_images.transpose(0, 3, 1, 2))
    with pytest.raises(UserError, match="has no split 'train'"):
        data.load("cifar10.1", tmp_path / "c101", "train")


def test_stl10_binaries_are_transposed_and_one_based(tmp_path):
    written = write_stl10(tmp_path)
    for split in ("train", "test"):
        loaded = data.load("stl10", tmp_path, split)
        assert np.array_equal(loaded.images.numpy(), written[split][0])
        assert loaded.labels.tolist() == (written[split][1].astype(int) - 1).tolist()
    assert loaded.classes[2] == "car"


def test_tinyimagenet_train_and_annotated_val(tmp_path):
    written = write_tinyimagenet(tmp_path)
    for split in ("train", "test"):
        loaded = data.load("tinyimagenet", tmp_path, split)
        expected = np.stack([img for img, _ in written[split]]).transpose(0, 3, 1, 2)
        assert np.array_equal(loaded.images.numpy(), expected)
        assert loaded.labels.tolist() == [k for _, k in written[split]]
    assert loaded.classes == ["thing 0", "thing 1", "thing 2"]


def test_image_size_resizes_any_format(tmp_path):
    write_stl10(tmp_path)
    assert data.load("stl10", tmp_path, "test", image_size=32).images.shape == (3, 3, 32, 32)


def test_generalisation_folder_maps_class_names(tmp_path):
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "gen", classes=("dog", "cat"), splits=("images",))
    loaded = data.load_folder_onto(root / "images", ["airplane", "cat", "dog"])
    assert sorted(set(loaded.labels.tolist())) == [1, 2] and loaded.classes == ["airplane", "cat", "dog"]
    with pytest.raises(UserError, match="not a training class"):
        data.load_folder_onto(root / "images", ["airplane", "cat"])


@pytest.mark.parametrize("breakage,match", [
    (lambda f: (f / "data_batch_3").write_bytes((f / "data_batch_3").read_bytes()[:100]), "data_batch_3 is not a readable"),
    (lambda f: (f / "data_batch_2").unlink(), "missing file .*data_batch_2"),
    (lambda f: (f / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})),
     "test_batch: label 10 is outside 0..9"),
    (lambda f: (f / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR."), "test_batch is not a readable"),
])
def test_corrupt_cifar_files_are_named(tmp_path, breakage, match):
    write_cifar10(tmp_path)
    breakage(tmp_path / "cifar-10-batches-py")
    with pytest.raises(UserError, match=match):
        data.load("cifar10", tmp_path, "train")
        data.load("cifar10", tmp_path, "test")


def test_corrupt_stl_and_tiny_files_are_named(tmp_path):
    write_stl10(tmp_path)
    x = tmp_path / "stl10_binary" / "test_X.bin"
    x.write_bytes(x.read_bytes()[:-5])
    with pytest.raises(UserError, match="test_X.bin: .* bytes is not a whole number"):
        data.load("stl10", tmp_path, "test")
    write_tinyimagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(UserError, match="cannot read image .*val_1.JPEG"):
        data.load("tinyimagenet", tmp_path, "test")


def test_failed_read_leaves_no_cache_entry(tmp_path):
    write_cifar10(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(UserError):
        data.load("cifar10", tmp_path, "test")
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="fixedhead data download cifar10 --data-dir DIR"):
        data.load("cifar10", tmp_path / "nowhere", "train")
    with pytest.raises(UserError, match="missing file .*data_batch_1"):
        data.load("cifar10", tmp_path, "train")
