"""The run folder: the only module that knows its file names. Every file is written atomically.

RUN_DIR/config.yaml     the resolved config
RUN_DIR/meta.json       git sha, versions, seed, device, command
RUN_DIR/metrics.jsonl   one JSON line per epoch
RUN_DIR/checkpoint.pt   latest training state (for --resume)
RUN_DIR/model.pt        the selected final weights with their config and class names
RUN_DIR/final.json      final metrics and status
RUN_DIR/analysis/       analysis.json and figures (fixedhead analyze)
RUN_DIR/evaluation.json clean / corrupted / generalisation accuracy (fixedhead evaluate)
RUN_DIR/sweep.json      the variant and overrides a sweep gave this run
RUN_DIR/failure.json    why a sweep's run failed
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from .errors import UserError

RUN_FILES = ("config.yaml", "meta.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "final.json")


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {error.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_environment(seed: int, device: str) -> dict:
    import numpy

    from . import __version__

    return {
        "fixedhead": __version__, "git_sha": _git_sha(), "seed": seed, "device": device,
        "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": torch.get_num_threads(), "command": sys.argv,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
    }


class RunDir:
    """Paths and readers/writers of one run folder."""

    def __init__(self, path, writable: bool = True):
        self.path = Path(path)
        self.writable = writable  # False on the non-zero ranks of a distributed run: only rank 0 writes

    def file(self, name: str) -> Path:
        return self.path / name

    def is_finished(self) -> bool:
        try:
            return read_json(self.file("final.json")).get("status") == "finished"
        except (OSError, ValueError):
            return False

    def has_checkpoint(self) -> bool:
        return self.file("checkpoint.pt").exists()

    def clear(self) -> None:
        """Remove this run's own files (for --overwrite); anything else in the folder is kept."""
        for name in RUN_FILES if self.writable else ():
            self.file(name).unlink(missing_ok=True)

    def write_json(self, name: str, data: dict) -> None:
        if self.writable:
            write_json(self.file(name), data)

    def write_sweep_info(self, info: dict) -> None:
        self.write_json("sweep.json", info)

    def read_optional(self, name: str) -> dict | None:
        """A JSON file of the run folder, or None when it is absent or unreadable."""
        try:
            return read_json(self.file(name))
        except (OSError, ValueError):
            return None

    def write_config(self, config: dict) -> None:
        if self.writable:
            atomic_write(self.file("config.yaml"), lambda f: f.write(yaml.safe_dump(config, sort_keys=False).encode()))

    def read_config(self) -> dict:
        try:
            return yaml.safe_load(self.file("config.yaml").read_text())
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"{self.path} has no readable config.yaml ({error}); is it a fixedhead run folder?") from None

    def append_metrics(self, record: dict) -> None:
        if not self.writable:
            return
        with open(self.file("metrics.jsonl"), "a") as file:
            file.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, records: list[dict]) -> None:
        if not self.writable:
            return
        text = "".join(json.dumps(r) + "\n" for r in records)
        atomic_write(self.file("metrics.jsonl"), lambda f: f.write(text.encode()))

    def read_metrics(self) -> list[dict]:
        """All whole lines of metrics.jsonl; a torn last line (killed mid-write) is dropped."""
        try:
            lines = self.file("metrics.jsonl").read_text().splitlines()
        except OSError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                break
        return records

    def save(self, name: str, state: dict) -> None:
        if self.writable:
            atomic_write(self.file(name), lambda f: torch.save(state, f))

    def load(self, name: str) -> dict:
        path = self.file(name)
        if not path.exists():
            raise UserError(f"{path} does not exist; train the run first (fixedhead train --out {self.path})")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a torn or foreign file: say which, never unpickle code
            raise UserError(f"cannot load {path}: {str(error).splitlines()[0]}") from None
