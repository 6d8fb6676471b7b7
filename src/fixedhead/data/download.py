"""Fetch a dataset from its canonical source, checking checksums where the publisher gives one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

TINYIMAGENET = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")
CIFAR101 = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"
CIFAR101_SIZES = {"v6": 2000, "v4": 2021}


def _torchvision(name: str, root: Path) -> None:
    from torchvision import datasets  # their downloaders check the published md5 sums

    if name == "stl10":
        datasets.STL10(str(root), split="train", download=True)
    elif name in ("fashion-mnist", "mnist"):  # lands in root/FashionMNIST/raw or root/MNIST/raw
        (datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST)(str(root), train=True, download=True)
    else:
        getattr(datasets, name.upper())(str(root), train=True, download=True)


def _tinyimagenet(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    url, md5 = TINYIMAGENET
    download_and_extract_archive(url, str(root), md5=md5)


def _cifar101(root: Path) -> None:
    # The CIFAR-10.1 authors publish no checksums; the files are checked by shape, dtype and labels.
    from torchvision.datasets.utils import download_url

    for version, count in CIFAR101_SIZES.items():
        for part in ("data", "labels"):
            download_url(f"{CIFAR101}cifar10.1_{version}_{part}.npy", str(root))
        images = np.load(root / f"cifar10.1_{version}_data.npy", allow_pickle=False)
        labels = np.load(root / f"cifar10.1_{version}_labels.npy", allow_pickle=False)
        if images.shape != (count, 32, 32, 3) or labels.shape != (count,) or labels.max() > 9:
            raise UserError(f"downloaded CIFAR-10.1 {version} files in {root} have unexpected shapes; delete them and retry")


DOWNLOADERS = {
    "cifar10": lambda root: _torchvision("cifar10", root),
    "cifar100": lambda root: _torchvision("cifar100", root),
    "stl10": lambda root: _torchvision("stl10", root),
    "tinyimagenet": _tinyimagenet,
    "cifar10.1": _cifar101,
    "fashion-mnist": lambda root: _torchvision("fashion-mnist", root),
    "mnist": lambda root: _torchvision("mnist", root),
}


def download(name: str, root) -> Path:
    """Download `name` into `root` (skipped when the files are already there and intact)."""
    if name not in DOWNLOADERS:
        raise UserError(f"no downloader for {name!r}; downloadable: {', '.join(DOWNLOADERS)}")
    if root is None:
        raise UserError(f"say where to put {name}: fixedhead data download {name} --data-dir DIR")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    try:
        DOWNLOADERS[name](root)
    except OSError as error:  # URLError, connection refused, DNS failure, disk full
        reason = getattr(error, "reason", None) or error.strerror or error
        raise UserError(f"cannot download {name} into {root}: {reason}; download it where there is internet "
                        "and copy it there, or check your connection") from None
    except RuntimeError as error:  # torchvision's "File not found or corrupted"
        raise UserError(f"download of {name} failed its integrity check: {error}") from None
    return root
