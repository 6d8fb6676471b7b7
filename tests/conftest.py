import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test decodes into its own cache folder, so tests never see each other's entries."""
    monkeypatch.setenv("FIXEDHEAD_CACHE", str(tmp_path / "cache"))


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class=6, size=16, splits=("train", "test"), seed=0):
    """A tiny ImageFolder tree of PNGs whose mean colour depends on the class (learnable)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                base = np.zeros((size, size, 3), np.uint8)
                base[..., index % 3] = 200
                noise = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(folder / f"{k:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished run of the tiny config (tiny.py, 1 epoch), trained once for the whole test run. Tests
    that change files copy it first (shutil.copytree), so that no test sees another's changes."""
    from fixedhead.config import make_config
    from fixedhead.training.fit import fit
    from tiny import TINY

    out = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIXEDHEAD_CACHE", str(tmp_path_factory.mktemp("cache")))
        fit(make_config(TINY, {"train.epochs": 1}), out, verbose=False)
    return out


@pytest.fixture
def image_folder(tmp_path):
    return write_image_folder(tmp_path / "images")


def pytest_report_header(config):
    cifar = "present" if SHARED_CIFAR.exists() else "absent"
    return f"cifar10-jpeg: {cifar}; cpu count {os.cpu_count()}"
