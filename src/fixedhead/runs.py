"""The run folder: the only module that knows its file names. Files are written atomically and read
through files.py (bounded, checked for the keys their readers use).

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

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .errors import UserError
from .files import check_fields, load_torch, read_json, read_text, read_yaml, save_torch, write_json, write_text, write_yaml

RUN_FILES = ("config.yaml", "meta.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "final.json")
# Files that describe the run's weights: they must never outlive them, so training removes them.
DERIVED = ("analysis", "evaluation.json", "evaluation.png", "evaluation.pdf", "failure.json")


class RunInUse(UserError):
    """Another process is training into this run folder."""


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

    def final(self) -> dict | None:
        """final.json checked for its status, or None when there is none; a damaged one is an error."""
        if not self.file("final.json").exists():
            return None
        final = check_fields(read_json(self.file("final.json"), "run record"), {"status": str}, self.file("final.json"))
        if final["status"] == "finished":
            check_fields(final, {"test_acc": (int, float)}, self.file("final.json"))
        return final

    def is_finished(self) -> bool:
        final = self.final()
        return final is not None and final["status"] == "finished"

    def has_checkpoint(self) -> bool:
        return self.file("checkpoint.pt").exists()

    @contextlib.contextmanager
    def lock(self):
        """Hold the run folder for one training process; a second one is refused (RunInUse).
        The lock is the kernel's (flock on the folder itself, so no lock file is left behind): it goes
        away with the process, even after kill -9."""
        if not self.writable:
            yield
            return
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(f"cannot write into {self.path}: {error.strerror or error}") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUse(f"{self.path} is being trained by another fixedhead process; wait for it or "
                               "choose another --out") from None
            yield
        finally:
            os.close(handle)

    def clear(self) -> None:
        """Remove this run's own files and what was derived from them (for --overwrite); anything else
        in the folder is kept."""
        if self.writable:
            for name in RUN_FILES:
                self.file(name).unlink(missing_ok=True)
        self.clear_derived()

    def clear_derived(self) -> None:
        """Remove the analyses and evaluations of the weights about to change."""
        for name in DERIVED if self.writable else ():
            path = self.file(name)
            try:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
            except OSError as error:
                raise UserError(f"cannot remove {path}, which describes the old weights: {error.strerror}") from None

    def write_json(self, name: str, data: dict) -> None:
        if self.writable:
            write_json(self.file(name), data)

    def write_sweep_info(self, info: dict) -> None:
        self.write_json("sweep.json", info)

    def read_optional(self, name: str) -> dict | None:
        """A JSON mapping of the run folder, or None when it is absent; a damaged one is an error."""
        if not self.file(name).exists():
            return None
        return check_fields(read_json(self.file(name), "run record"), {}, self.file(name))

    def write_config(self, config: dict) -> None:
        if self.writable:
            write_yaml(self.file("config.yaml"), config)

    def read_config(self) -> dict:
        path = self.file("config.yaml")
        if not path.exists():
            raise UserError(f"{self.path} has no config.yaml; is it a fixedhead run folder?")
        tree = read_yaml(path, "run config")
        if not isinstance(tree, dict):
            raise UserError(f"{path} must hold a mapping of config keys")
        return tree

    def append_metrics(self, record: dict) -> None:
        if self.writable:
            self.rewrite_metrics(self.read_metrics() + [record])

    def rewrite_metrics(self, records: list[dict]) -> None:
        if self.writable:
            write_text(self.file("metrics.jsonl"), "".join(json.dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict]:
        """The epoch records of metrics.jsonl. A torn last line (killed mid-write) is dropped; a damaged
        line before it is an error naming the line, so no good record after it is lost unseen."""
        path = self.file("metrics.jsonl")
        if not path.exists():
            return []
        lines = read_text(path, "metrics log", limit=256 << 20).splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                check_fields(record, {"epoch": int}, path)
            except (ValueError, RecursionError):
                if number == len(lines):
                    break
                raise UserError(f"{path} line {number} is not an epoch record; repair or delete that line, or "
                                "start again with --overwrite") from None
            records.append(record)
        return records

    def save(self, name: str, state: dict) -> None:
        if self.writable:
            save_torch(self.file(name), state)

    def load(self, name: str) -> dict:
        path = self.file(name)
        if not path.exists():
            raise UserError(f"{path} does not exist; train the run first (fixedhead train --out {self.path})")
        return load_torch(path, "weights file")
