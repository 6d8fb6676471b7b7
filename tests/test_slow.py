"""End-to-end checks on real data; marked slow (about 2 minutes together), run in CI."""

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


def test_cifar10_jpeg_full_set_reads_as_the_readme_says(tmp_path):
    if not SHARED_CIFAR.exists():
        pytest.skip(f"{SHARED_CIFAR} is absent (the shared CIFAR-10 JPEG set)")
    with tarfile.open(SHARED_CIFAR) as archive:
        archive.extractall(tmp_path, filter="data")
    summary = info("imagefolder", tmp_path)
    assert summary["splits"] == {"train": 50000, "test": 10000} and summary["num_classes"] == 10
    assert summary["image_size"] == [3, 32, 32]
    assert summary["mean"] == pytest.approx([0.49, 0.48, 0.45], abs=0.01)


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


@pytest.mark.skipif(not FASHION.exists(), reason=f"{FASHION} is absent (apt-get install dataset-fashion-mnist)")
def test_one_short_real_fashion_mnist_run(tmp_path):
    config = make_config({"data.name": "fashion-mnist", "model.arch": "fastnet-small", "model.similarity": "cosine",
                          "model.fixed": True, "train.epochs": 1, "train.batch_size": 256, "train.lr": 0.05,
                          "train.bf16": native_bf16("cpu"), "train.channels_last": True})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["num_test"] == 10000 and final["test_acc"] > 0.7  # chance 0.1; about 0.85 after one epoch
