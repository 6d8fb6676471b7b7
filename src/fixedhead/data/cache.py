"""A cache of decoded uint8 arrays, keyed by the source files' names, sizes and times.

Each entry is a folder `<cache_dir>/<key>/` with `images.npy` (memory-mapped on load), `labels.npy`
and `classes.json`; it is written to a temporary folder and renamed into place, so a killed run
leaves either no entry or a whole one. A changed source file changes the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write, umask, write_json


def default_cache_dir() -> Path:
    return Path(os.environ.get("FIXEDHEAD_CACHE", Path.home() / ".cache" / "fixedhead"))


def source_key(paths: list[Path], extra: str) -> str:
    """Hash of each source file's path, size and modification time, plus `extra` (e.g. image size)."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise UserError(f"missing file {path}") from None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_entry(cache_dir: Path, key: str) -> dict | None:
    folder = cache_dir / key
    try:
        return {
            "images": np.load(folder / "images.npy", mmap_mode="r"),
            "labels": np.load(folder / "labels.npy"),
            "classes": json.loads((folder / "classes.json").read_text()),
        }
    except (OSError, ValueError):
        return None


def store_entry(cache_dir: Path, key: str, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """Write an entry atomically; a cache that cannot be written is skipped, never fatal."""
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would survive the rename
        for name, array in (("images.npy", images), ("labels.npy", labels)):
            atomic_write(tmp / name, lambda f, a=array: np.save(f, a))
        write_json(tmp / "classes.json", classes)
        os.replace(tmp, cache_dir / key)
    except (OSError, UserError):
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def cached(key: str, read) -> dict:
    """The cache entry for `key`, or read() stored under it. A failed read leaves no entry."""
    cache_dir = default_cache_dir()
    entry = load_entry(cache_dir, key)
    if entry is None:
        entry = read()
        store_entry(cache_dir, key, np.ascontiguousarray(entry["images"]), np.asarray(entry["labels"]),
                    list(entry["classes"]))
    return entry
