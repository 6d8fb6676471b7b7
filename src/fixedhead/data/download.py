"""Fetch a dataset from its canonical source, checking checksums where the publisher gives one."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UserError

TINYIMAGENET = ("http://cs231n.stanford.edu/tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de")
CIFAR101 = "https://raw.githubusercontent.com/modestyachts/CIFAR-10.1/master/datasets/"
CIFAR101_SIZES = {"v6": 2000, "v4": 2021}


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a .tar(.gz) or .zip into `target`, refusing absolute paths, '..', links and devices that
    would write outside it (checked for every member before anything is written)."""
    target = Path(target).resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            for name in opened.namelist():
                _check_member(archive, name, target)
            opened.extractall(target)
        return
    with tarfile.open(archive) as opened:
        members = opened.getmembers()
        for member in members:
            _check_member(archive, member.name, target)
            if member.issym() or member.islnk():
                _check_member(archive, member.linkname, (target / member.name).parent, link=True)
            if member.isdev():
                raise UserError(f"refusing to extract {archive}: {member.name} is a device file")
        # The standard library's "data" filter also drops set-uid bits, group/other write permission
        # and owners, and refuses anything the checks above missed.
        try:
            opened.extractall(target, members=members, filter="data")
        except tarfile.FilterError as error:
            raise UserError(f"refusing to extract {archive}: {error}") from None


def _check_member(archive: Path, name: str, base: Path, link: bool = False) -> None:
    path = (base / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_relative_to(base.resolve()):
        what = "a link pointing" if link else "a member"
        raise UserError(f"refusing to extract {archive}: {what} {name!r} would land outside {base}")


def _archive(url: str, filename: str, md5: str | None, root: Path) -> None:
    from torchvision.datasets.utils import check_integrity, download_url

    if not check_integrity(str(root / filename), md5):
        download_url(url, str(root), filename, md5)  # checks the md5 after downloading
    safe_extract(root / filename, root)


def _idx_files(name: str, root: Path) -> None:
    """The four gzipped IDX files into root/<name>/, each checked against torchvision's md5 sums."""
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity, download_url

    source = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    folder = root / name
    for filename, md5 in source.resources:
        if check_integrity(str(folder / filename), md5):
            continue
        error: OSError = OSError(f"no mirror lists {filename}")
        for mirror in source.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(folder), filename, md5)
                break
            except OSError as failed:  # this mirror is unreachable: try the next one
                error = failed
        else:
            raise error


def _torchvision(name: str, root: Path) -> None:
    from torchvision import datasets  # their class attributes hold the canonical URLs and md5 sums

    source = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[name]
    _archive(source.url, source.filename, source.tgz_md5, root)


def _tinyimagenet(root: Path) -> None:
    url, md5 = TINYIMAGENET
    _archive(url, "tiny-imagenet-200.zip", md5, root)


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
    "fashion-mnist": lambda root: _idx_files("fashion-mnist", root),
    "mnist": lambda root: _idx_files("mnist", root),
}


def download(name: str, root) -> Path:
    """Download `name` into `root` (skipped when the files are already there and intact)."""
    from . import DATASETS

    if name in DATASETS and (DATASETS[name].sources is None or DATASETS[name].generated):  # no files to get
        raise UserError(f"{name!r} needs no download (it ships with fixedhead or scikit-learn, or is made on first "
                        f"use); use it as --data {name}")
    if name not in DOWNLOADERS:
        raise UserError(f"no downloader for {name!r}; downloadable: {', '.join(DOWNLOADERS)}")
    if root is None:
        raise UserError(f"say where to put {name}: fixedhead data download {name} --data-dir DIR")
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-dir {root} is a file; give a folder to download {name} into")
    before = _folders(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        DOWNLOADERS[name](root)
    except OSError as error:  # URLError, connection refused, DNS failure, disk full
        _remove_empty(_folders(root) - before)
        reason = getattr(error, "reason", None) or error.strerror or error
        raise UserError(f"cannot download {name} into {root}: {reason}; download it where there is internet "
                        "and copy it there, or check your connection") from None
    except RuntimeError as error:  # torchvision's "File not found or corrupted" after a download
        _remove_empty(_folders(root) - before)
        raise UserError(f"download of {name} failed its integrity check: {error}") from None
    return root


def _folders(root: Path) -> set[Path]:
    """The folders that exist on the way to root and below it (to know which ones a failed download made)."""
    on_the_way = {p for p in (root, *root.parents) if p.is_dir()}
    return on_the_way | ({p for p in root.rglob("*") if p.is_dir()} if root.is_dir() else set())


def _remove_empty(folders: set[Path]) -> None:
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty, or not there: keep it
