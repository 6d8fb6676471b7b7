"""fashion-mnist-mini, the Fashion-MNIST subset shipped in the package: content, integrity, and the
demo's choice between it and the full set."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from fixedhead import data
from fixedhead.cli import main
from fixedhead.data import idx, mini
from fixedhead.experiments.demo import choose_dataset

FULL = idx.locate("fashion-mnist", None)


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_subset_is_balanced_real_sized_and_named(split):
    images = data.load(mini.NAME, split=split)
    per_class = mini.PER_CLASS[split]
    assert images.images.shape == (10 * per_class, 1, 28, 28) and images.images.dtype == torch.uint8
    assert np.bincount(images.labels.numpy(), minlength=10).tolist() == [per_class] * 10
    assert images.classes == idx.FASHION_CLASSES
    assert 20 < images.images.float().mean() < 120  # real clothing images on black, not blank or noise


def test_the_shipped_files_have_their_checksums_and_fit_the_wheel():
    shipped = {path.name for path in mini.FOLDER.iterdir() if path.name.endswith(".gz")}
    assert shipped == set(mini.SHA256) == {mini.file_name(s, k) for s in ("train", "test") for k in ("images", "labels")}
    for name, expected in mini.SHA256.items():
        assert hashlib.sha256((mini.FOLDER / name).read_bytes()).hexdigest() == expected
    assert sum((mini.FOLDER / name).stat().st_size for name in shipped) < 6e6
    assert "Zalando" in (mini.FOLDER / "LICENSE").read_text()


@pytest.mark.skipif(FULL is None, reason="the full Fashion-MNIST is absent (apt-get install dataset-fashion-mnist)")
def test_the_subset_is_the_stated_selection_of_the_real_set():
    for split, per_class in mini.PER_CLASS.items():
        full = idx.read_split(FULL, split, idx.FASHION_CLASSES)
        keep = mini.select(full["labels"], per_class)
        subset = data.load(mini.NAME, split=split)
        assert np.array_equal(subset.images.numpy(), full["images"][keep])
        assert np.array_equal(subset.labels.numpy(), full["labels"][keep])


def test_selection_is_nested_stratified_and_seeded():
    labels = np.random.default_rng(3).integers(0, 4, 500)
    small, large = mini.select(labels, 5), mini.select(labels, 20)
    assert set(small) <= set(large) and np.bincount(labels[large]).tolist() == [20] * 4
    assert not np.array_equal(mini.select(labels, 5, seed=1), small)


@pytest.fixture
def copied(tmp_path, monkeypatch):
    folder = tmp_path / "mini"
    shutil.copytree(mini.FOLDER, folder)
    monkeypatch.setattr(mini, "FOLDER", folder)
    return folder


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove"])
def test_a_damaged_embedded_file_is_one_line(copied, capsys, damage):
    path = copied / mini.file_name("train", "images")
    raw = bytearray(path.read_bytes())
    if damage == "flip a byte":
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[:1000]))
    else:
        path.unlink()
    assert main(["data", "info", mini.NAME]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and mini.NAME in err and "reinstall" in err


def test_the_demo_prefers_the_full_set_and_falls_back_to_the_subset_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "nowhere")
    messages = []
    assert choose_dataset("auto", None, messages.append) == mini.NAME
    assert len(messages) == 1 and mini.NAME in messages[0] and "apt-get install dataset-fashion-mnist" in messages[0]
    full = tmp_path / "fm"
    full.mkdir()
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            (full / mini.file_name(split, kind)).write_bytes(b"")  # found by name; read only when training
    messages.clear()
    assert choose_dataset("auto", full, messages.append) == "fashion-mnist"
    assert len(messages) == 1 and str(full) in messages[0]
    assert choose_dataset(mini.NAME, None, messages.append) == mini.NAME and len(messages) == 1


def test_the_demo_reads_its_own_numbers_and_reads_a_gap_only_where_mcnemar_tells_the_heads_apart():
    from fixedhead.experiments.demo import reading

    def result(acc, rho):
        return {"acc": acc, "spearman_rho": rho, "num_images": 2000}

    results = {"dot-learned": result(0.824, 0.55), "dot-fixed": result(0.834, -0.25),
               "cosine-learned": result(0.783, 0.57), "cosine-fixed": result(0.816, -0.14)}
    tests = {"cosine": {"p": 0.0004}, "dot": {"p": 0.21}}
    lines = reading(results, tests)
    assert "held here, rho = 0.55 (dot) and 0.57 (cosine)" in lines[0] and "at most 0.25" in lines[0]
    assert "held (McNemar's exact p = 0.0004) here, +3.3 points" in lines[1]
    assert "not told apart on these images (McNemar's exact p = 0.21) here, +1.0 points" in lines[2]
    assert "2,000 test images" in lines[3] and "demonstration" in lines[3]
    results["cosine-fixed"] = result(0.70, -0.14)
    assert "did not hold (McNemar's exact p = 0.0004) here, -8.3 points" in reading(results, tests)[1]


def test_the_demo_tests_the_heads_on_the_images_they_share(tmp_path, tiny_run):
    """correct_on_test gives each run's per-image outcome in the test split's order, so that McNemar's
    test pairs the same images: its accuracy is the run's recorded one."""
    import json

    from fixedhead.evaluation.trained import correct_on_test

    correct = correct_on_test(tiny_run, "cpu")
    final = json.loads((tiny_run / "final.json").read_text())
    assert correct.dtype == bool and len(correct) == final["num_test"]
    assert correct.mean() == pytest.approx(final["test_acc"])
