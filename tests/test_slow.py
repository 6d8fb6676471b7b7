"""End-to-end checks on real data; marked slow (about 3 minutes together, the fresh-machine demo most of it), run in CI."""

import json
import tarfile

import pytest

from conftest import SHARED_CIFAR
from fixedhead import fit
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.data import info
from fixedhead.data.idx import SYSTEM_DIR
from fixedhead.devices import native_bf16

pytestmark = pytest.mark.slow
FASHION = SYSTEM_DIR / "fashion-mnist"


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory):
    """The first 300 train and 100 test images per class of the shared CIFAR-10 (JPEG) set."""
    if not SHARED_CIFAR.exists():
        pytest.skip(f"{SHARED_CIFAR} is absent (the shared CIFAR-10 JPEG set)")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    limits, counts = {"train": 300, "test": 100}, {}
    with tarfile.open(SHARED_CIFAR) as archive:
        members = []
        for member in archive:
            parts = member.name.strip("./").split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in limits:
                key = (parts[0], parts[1])
                counts[key] = counts.get(key, 0) + 1
                if counts[key] <= limits[parts[0]]:
                    members.append(member)
        archive.extractall(root, members=members, filter="data")
    return root


def test_cifar10_jpeg_set_is_what_its_readme_says(cifar_subset):
    """The archive's listing: 5,000 training and 1,000 test images in each of 10 class folders; a subset of
    it read through imagefolder: 32x32 RGB with CIFAR-10's channel means. (Extracting and decoding all
    60,000 images took 50 s; the listing and the subset check the same statements.)"""
    counts = {}
    with tarfile.open(SHARED_CIFAR) as archive:
        for member in archive:
            parts = member.name.strip("./").split("/")
            if member.isfile() and len(parts) == 3:
                counts.setdefault(parts[0], {}).setdefault(parts[1], 0)
                counts[parts[0]][parts[1]] += 1
    assert {split: sorted(c.values()) for split, c in counts.items()} == {"train": [5000] * 10, "test": [1000] * 10}
    assert sorted(counts["train"]) == sorted(counts["test"])
    summary = info("imagefolder", cifar_subset)
    assert summary["splits"] == {"train": 3000, "test": 1000} and summary["num_classes"] == 10
    assert summary["image_size"] == [3, 32, 32]
    assert summary["mean"] == pytest.approx([0.49, 0.48, 0.45], abs=0.02)


def test_cifar10_jpeg_trains_through_imagefolder(cifar_subset, tmp_path):
    config = make_config({"data.name": "imagefolder", "data.data_dir": str(cifar_subset), "model.arch": "fastnet-small",
                          "train.epochs": 6, "train.batch_size": 64, "train.lr": 0.05, "train.bf16": native_bf16("cpu"),
                          "train.channels_last": True})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["num_test"] == 1000
    assert final["test_acc"] > 0.3  # chance is 0.1; 3,000 training images, 6 epochs


def test_the_main_job_on_a_fresh_machine_uses_the_embedded_subset_and_shows_the_effect(tmp_path, capsys, monkeypatch):
    """`fixedhead demo` as the README's first command runs it where the full Fashion-MNIST is absent. The
    thresholds are issue 16's criteria, which held for each of 3 seeds at the shipped size (docs/results.md)."""
    from fixedhead.data import idx, mini

    monkeypatch.setattr(idx, "SYSTEM_DIR", tmp_path / "nowhere")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out, err = capsys.readouterr()
    assert mini.NAME in err and "apt-get install dataset-fashion-mnist" in err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    r = summary["results"]
    assert summary["dataset"] == mini.NAME and r["dot-learned"]["num_images"] == 10 * mini.PER_CLASS["test"]
    assert min(r["dot-learned"]["spearman_rho"], r["cosine-learned"]["spearman_rho"]) > 0.4
    assert max(abs(r["dot-fixed"]["spearman_rho"]), abs(r["cosine-fixed"]["spearman_rho"])) <= 0.3
    assert r["cosine-fixed"]["acc"] > r["cosine-learned"]["acc"]
    assert "demonstration" in out and f"{100 * (r['cosine-fixed']['acc'] - r['cosine-learned']['acc']):+.1f} points" in out


def _first_images(source, folder, split: str, count: int) -> None:
    """The first `count` images and labels of a real IDX split, rewritten as IDX files (header count changed)."""
    import gzip
    import struct

    from fixedhead.data.idx import idx_file, idx_name

    for kind, header in (("images", 16), ("labels", 8)):
        raw = gzip.decompress(idx_file(source, split, kind).read_bytes())
        item = 28 * 28 if kind == "images" else 1
        body = raw[header:header + count * item]
        header_bytes = raw[:4] + struct.pack(">I", count) + raw[8:header]
        (folder / f"{idx_name(split, kind)}.gz").write_bytes(gzip.compress(header_bytes + body))


@pytest.mark.skipif(not FASHION.exists(), reason=f"{FASHION} is absent (apt-get install dataset-fashion-mnist)")
def test_a_short_run_on_real_fashion_mnist_images(tmp_path):
    """Real images through the IDX reader and the trainer: the first 6,000 training and 2,000 test images of
    the Debian package's files (the full files' reading is tests/test_idx.py's)."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    _first_images(FASHION, folder, "train", 6000)
    _first_images(FASHION, folder, "test", 2000)
    config = make_config({"data.name": "fashion-mnist", "data.data_dir": str(folder), "model.arch": "fastnet-small",
                          "model.similarity": "cosine", "model.fixed": True, "train.epochs": 2,
                          "train.batch_size": 64, "train.lr": 0.05, "train.bf16": native_bf16("cpu"),
                          "train.channels_last": True})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["num_test"] == 2000 and final["test_acc"] > 0.7  # chance 0.1
