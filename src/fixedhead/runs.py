"""The run folder: the only module that knows its file names. Files are written atomically and read
through files.py (bounded, checked for the keys their readers use).

RUN_DIR/config.yaml     the resolved config
RUN_DIR/meta.json       git sha, versions, seed, device, command
RUN_DIR/metrics.jsonl   one JSON line per epoch
RUN_DIR/checkpoint.pt   latest training state (for --resume)
RUN_DIR/model.pt        the selected final weights with their config and class names
RUN_DIR/final.json      final metrics and status
RUN_DIR/analysis/       analysis.json (the numbers), matrices.pt (C x C matrices: 37 MB of JSON at 1,000 classes)
                        and figures (fixedhead analyze)
RUN_DIR/evaluation.json clean / corrupted / generalisation accuracy (fixedhead robustness)
RUN_DIR/sweep.json      the variant and overrides a sweep gave this run
RUN_DIR/failure.json    why a sweep's run failed
RUN_DIR/export/         the model in the formats `fixedhead export` wrote (EXPORTS), each with NAME.json

torch is imported where a tensor is read or written, so that the command line's help and a report load
without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from .errors import UserError, shown
from .files import (
    MAX_TEXT_BYTES,
    check_fields,
    load_torch,
    read_json,
    read_text,
    read_yaml,
    save_torch,
    write_json,
    write_text,
    write_yaml,
)
from .version import VERSION


def outcome(losses: tuple | None, end_loss: float | None = None, num_classes: int | None = None) -> str:
    """How a run that trained to its end came out, from its (first, last) epochs' mean training losses and
    `end_loss`, the mean over the last quarter of the last epoch's steps (the last epoch's mean where a run
    did not record it):

    - "diverged": a loss became non-finite (training stops there) or the last epoch's loss is above the
      first's (a blow-up that stayed finite). Only then: a run whose loss fell never diverged.
    - "at_chance": the loss did not rise, but the end loss is not below ln C, the cross-entropy of a uniform
      guess over the C classes (label smoothing or not): training ended no better than guessing (a learned
      dot head at lr 3.2 fell from 3.26 to 2.52 > ln 10 and scored 10%). A one-epoch run is judged on the
      end of its epoch, not on the mean that includes its untrained first steps.
    - "finished" otherwise.
    """
    if losses is None:
        return "finished"
    if not all(map(math.isfinite, losses)) or losses[-1] > losses[0]:
        return "diverged"
    end = losses[-1] if end_loss is None else end_loss
    if num_classes is not None and num_classes > 1 and end >= math.log(num_classes):
        return "at_chance"
    return "finished"


#: What `fixedhead export` writes into a run's export/ folder, per format, each with NAME.json beside it (its
#: classes and input); the only files training removes from there.
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}

#: The statuses of a run that trained to its end (a result, not to be trained again).
RESULTS = ("finished", "diverged", "at_chance")
#: The results that are not in a cell's mean but counted beside it.
FAILED_TO_TRAIN = ("diverged", "at_chance")

OUTCOME_RULES = {
    "diverged": "training loss non-finite, or higher in the last epoch than in the first",
    "at_chance": "training loss fell but ended not below ln C, the loss of a uniform guess over C classes",
}


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
    import torch

    return {
        "fixedhead": VERSION, "git_sha": _git_sha(), "seed": seed, "device": device,
        "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "threads": torch.get_num_threads(), "command": sys.argv,
        "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None,
    }


def _folder(path) -> Path:
    """A run, sweep or compare folder's path; an empty one (which would mean the working folder) is refused."""
    if not str(path).strip():
        raise UserError("the folder (--out or a run folder) must be a non-empty path; give one, e.g. runs/x")
    return Path(path)


class RunDir:
    """Paths and readers/writers of one run folder, by what they hold (no caller spells a file name)."""

    def __init__(self, path, writable: bool = True):
        self.path = _folder(path)
        self.writable = writable  # False on the non-zero ranks of a distributed run: only rank 0 writes
        self.config_path = self.path / "config.yaml"
        self.meta_path = self.path / "meta.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.model_path = self.path / "model.pt"
        self.final_path = self.path / "final.json"
        self.analysis_dir = self.path / "analysis"  # analysis.json and figures
        self.analysis_path = self.analysis_dir / "analysis.json"
        self.matrices_path = self.analysis_dir / "matrices.pt"
        self.evaluation_path = self.path / "evaluation.json"
        self.evaluation_figure = self.path / "evaluation"  # .png and .pdf beside evaluation.json
        self.sweep_info_path = self.path / "sweep.json"
        self.failure_path = self.path / "failure.json"
        self.tensorboard_dir = self.path / "tensorboard"  # train.log=tensorboard: event files
        self.export_dir = self.path / "export"  # fixedhead export: the model in each format, and its description

    def _own_files(self) -> list[Path]:
        return [self.config_path, self.meta_path, self.metrics_path, self.checkpoint_path, self.model_path,
                self.final_path]

    def _derived(self) -> list[Path]:
        """What describes the run's weights: it must never outlive them, so training removes it."""
        return [self.evaluation_path, *(self.evaluation_figure.with_suffix(s) for s in (".png", ".pdf")),
                self.failure_path]

    def is_run(self) -> bool:
        """Whether fixedhead made this folder a run: its meta.json names the fixedhead version that wrote it."""
        try:
            return self.meta_path.is_file() and isinstance(self.read_meta().get("fixedhead"), str)
        except UserError:
            return False

    def check_ours(self) -> None:
        """Refuse a folder that holds files fixedhead did not write (a run is never started or overwritten over
        someone's files); the sweep's own record of a run it is about to train is allowed."""
        if not self.path.is_dir() or self.is_run():
            return
        foreign = sorted(p.name for p in self.path.iterdir() if p not in (self.sweep_info_path, self.failure_path))
        if foreign:
            raise UserError(f"{self.path} holds {len(foreign)} file(s) that fixedhead did not write (e.g. "
                            f"{shown(foreign[0])}) and is not a fixedhead run; choose a new or empty folder for --out")

    def analysis_folder(self) -> Path:
        """The analysis folder, made if needed; a symlink there (which would send the writes elsewhere) is refused."""
        return self._own_folder(self.analysis_dir)

    def export_folder(self) -> Path:
        """The export folder, made if needed; a symlink there is refused."""
        return self._own_folder(self.export_dir)

    @staticmethod
    def _own_folder(folder: Path) -> Path:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise UserError(f"{folder} is a link or a file, not a folder of this run; remove it and run the command "
                            "again")
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ---- state --------------------------------------------------------------------------------

    def final(self) -> dict | None:
        """final.json checked for its status, or None when there is none; a damaged one is an error."""
        if not self.final_path.exists():
            return None
        final = check_fields(read_json(self.final_path, "run record"), {"status": str}, self.final_path)
        if final["status"] == "finished":
            check_fields(final, {"test_acc": (int, float)}, self.final_path)
        return final

    def is_finished(self) -> bool:
        """Trained to its end (or stopped by divergence): a result, not to be trained again."""
        final = self.final()
        return final is not None and final["status"] in RESULTS

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def has_model(self) -> bool:
        return self.model_path.exists()

    @contextlib.contextmanager
    def lock(self, training: bool = True):
        """Hold the run folder for one process that writes into it: training, or (`training=False`) an
        analysis or evaluation of an existing run, which holds it from reading the weights to writing what
        it derived, so that no training replaces them meanwhile. A second one is refused (RunInUse).
        The lock is the kernel's (flock on the folder itself, so no lock file is left behind): it goes
        away with the process, even after kill -9."""
        if not self.writable:
            yield
            return
        import fcntl

        if not training and not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder; give a run folder written by fixedhead train")
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(f"cannot write into {self.path}: {error.strerror or error}") from None
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunInUse(f"{self.path} is in use by another fixedhead process (training it, or analysing "
                               "or evaluating it); wait for it to end" + (" or choose another --out" if training
                                                                           else "")) from None
            yield
        finally:
            if created and not any(self.path.iterdir()):  # refused before writing anything: leave no trace
                self.path.rmdir()
            os.close(handle)

    def clear(self) -> None:
        """Remove this run's own files, its tracker logs and what was derived from them (for --overwrite);
        anything else in the folder is kept."""
        self._remove_all(self._removals(own=True))

    def clear_derived(self) -> None:
        """Remove the analyses and evaluations of the weights about to change: only the files fixedhead wrote
        (analysis.json lists the analysis's figures), then the analysis folder if that left it empty."""
        self._remove_all(self._removals(own=False))

    def _removals(self, own: bool) -> list[tuple[list[Path], Path | None]]:
        """(files, folder to remove if that empties it): the run's own files and tracker logs if `own`, and
        what describes its weights."""
        groups: list[tuple[list[Path], Path | None]] = []
        if own:
            groups.append((self._own_files(), None))
            if self.tensorboard_dir.is_dir() and not self.tensorboard_dir.is_symlink():
                groups.append((sorted(self.tensorboard_dir.glob("events.out.tfevents.*")), self.tensorboard_dir))
        groups.append((self._derived(), None))
        if self.export_dir.is_dir() and not self.export_dir.is_symlink():
            names = [*EXPORTS.values(), *(f"{name}.json" for name in EXPORTS.values())]
            groups.append(([self.export_dir / name for name in names], self.export_dir))
        if self.analysis_dir.is_symlink():
            groups.append(([self.analysis_dir], None))
        elif self.analysis_dir.is_dir():
            groups.append(([self.analysis_dir / name for name in self._analysis_files()], self.analysis_dir))
        return groups

    def _remove_all(self, groups: list[tuple[list[Path], Path | None]]) -> None:
        """All or nothing, as far as the folders' permissions tell: a file whose folder is read-only is
        refused before anything is removed (else an --overwrite would leave half a run)."""
        if not self.writable:
            return
        present = [path for paths, _ in groups for path in paths if path.is_symlink() or path.is_file()]
        blocked = next((path for path in present if not os.access(path.parent, os.W_OK | os.X_OK)), None)
        if blocked is not None:
            raise UserError(f"cannot remove {blocked}: its folder is not writable; nothing was removed (make "
                            f"{blocked.parent} writable, or choose another --out)")
        for paths, folder in groups:
            self._remove(paths, folder)

    def _analysis_files(self) -> list[str]:
        names = [self.analysis_path.name, self.matrices_path.name]
        try:
            figures = (self.read_analysis() or {}).get("figures")
        except UserError:
            figures = None
        if isinstance(figures, list):
            names += [f for f in figures if isinstance(f, str) and f and Path(f).name == f and f not in (".", "..")]
        return names

    @staticmethod
    def _remove(paths: list[Path], folder: Path | None = None) -> None:
        """Unlink these files (a folder among them is left alone), then `folder` if it is empty."""
        try:
            for path in paths:
                if path.is_symlink() or path.is_file():
                    path.unlink()
            if folder is not None and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError as error:
            raise UserError(f"cannot remove {error.filename}, which describes the old weights: {error.strerror}") from None

    # ---- records ------------------------------------------------------------------------------

    def _write_json(self, path: Path, data: dict) -> None:
        if self.writable:
            write_json(path, data)

    @staticmethod
    def _read_mapping(path: Path) -> dict | None:
        """A JSON mapping, or None when the file is absent; a damaged one is an error."""
        return check_fields(read_json(path, "run record"), {}, path) if path.exists() else None

    def write_meta(self, meta: dict) -> None:
        self._write_json(self.meta_path, meta)

    def record_resume(self, epoch: int, device: str, bf16: bool) -> bool | None:
        """Add to meta.json's `resumed` list where and in which precision training went on after `epoch`;
        returns the bf16 the run started with (None when meta.json does not say)."""
        meta = self.read_meta()
        resumed = meta.get("resumed")
        meta["resumed"] = [*(resumed if isinstance(resumed, list) else []), {"epoch": epoch, "device": device, "bf16": bf16}]
        self.write_meta(meta)
        return meta.get("bf16") if isinstance(meta.get("bf16"), bool) else None

    def version(self) -> str | None:
        """The fixedhead version that wrote this run (meta.json), or None when it does not say."""
        version = self.read_meta().get("fixedhead")
        return version if isinstance(version, str) else None

    def read_meta(self) -> dict:
        """meta.json as a mapping ({} when absent); read it with precision() and num_classes() below."""
        return self._read_mapping(self.meta_path) or {}

    def write_final(self, final: dict) -> None:
        self._write_json(self.final_path, final)

    def write_sweep_info(self, info: dict) -> None:
        self._write_json(self.sweep_info_path, info)

    def read_sweep_info(self) -> dict:
        return self._read_mapping(self.sweep_info_path) or {}

    def write_failure(self, failure: dict) -> None:
        self._write_json(self.failure_path, failure)

    def read_analysis(self) -> dict | None:
        try:
            return self._read_mapping(self.analysis_path)
        except UserError:
            if self.matrices_path.exists() or self.analysis_path.stat().st_size <= MAX_TEXT_BYTES:
                raise
            raise UserError(f"{self.analysis_path} is larger than {MAX_TEXT_BYTES >> 20} MiB: written by an older "
                            "fixedhead, which kept the class-by-class matrices inside it; run "
                            f"'fixedhead analyze {self.path}' again") from None

    def write_analysis(self, result: dict) -> None:
        """analysis.json: written last, so that its presence means the analysis (figures, matrices) is whole."""
        self._write_json(self.analysis_path, result)

    def write_evaluation(self, result: dict) -> None:
        self._write_json(self.evaluation_path, result)

    def read_evaluation(self) -> dict | None:
        """evaluation.json checked for the fields the report and the figures read; None when absent."""
        path = self.evaluation_path
        if not path.exists():
            return None
        result = check_fields(read_json(path, "evaluation"), {"clean_acc": (int, float), "num_test": int,
                                                              "corruptions": dict, "generalization": dict}, path)
        for name, entry in result["corruptions"].items():
            check_fields(entry, {"acc": dict, "mean_acc": (int, float), "relative_drop": (int, float)}, f"{path}: {name}")
            for severity, acc in entry["acc"].items():
                check_fields({"acc": acc}, {"acc": (int, float)}, f"{path}: {name} severity {shown(severity)}")
        for spec, entry in result["generalization"].items():
            check_fields(entry, {"acc": (int, float), "num_images": int}, f"{path}: {shown(spec)}")
        return result

    def write_matrices(self, matrices: dict) -> None:
        """The analysis's class-by-class matrices, as tensors (a weights-only torch file)."""
        import torch

        if self.writable:
            save_torch(self.matrices_path, {key: torch.as_tensor(value) for key, value in matrices.items()})

    def read_matrices(self, keys: tuple, size: int) -> dict | None:
        """The matrices named by `keys`, each `size` x `size`, as numpy arrays; None when the file is absent."""
        import torch

        if not self.matrices_path.exists():
            return None
        state = load_torch(self.matrices_path, "analysis matrices file")
        for key in keys:
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (size, size) or value.is_complex():
                found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise UserError(f"{self.matrices_path}: {key!r} must be a real {size} x {size} tensor (one row and "
                                f"column per class), found {found}")
        return {key: state[key].numpy() for key in keys}

    def write_config(self, config: dict) -> None:
        if self.writable:
            write_yaml(self.config_path, config)

    def read_config(self) -> dict:
        if not self.config_path.exists():
            raise UserError(f"{self.path} has no {self.config_path.name}; is it a fixedhead run folder?")
        tree = read_yaml(self.config_path, "run config")
        if not isinstance(tree, dict):
            raise UserError(f"{self.config_path} must hold a mapping of config keys")
        return tree

    def append_metrics(self, record: dict) -> None:
        if self.writable:
            self.rewrite_metrics(self.read_metrics() + [record])

    def rewrite_metrics(self, records: list[dict]) -> None:
        if self.writable:
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    def read_metrics(self) -> list[dict]:
        """The epoch records of metrics.jsonl. A torn last line (killed mid-write) is dropped; a damaged
        line before it is an error naming the line, so no good record after it is lost unseen."""
        path = self.metrics_path
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

    # ---- weights ------------------------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        if self.writable:
            save_torch(self.checkpoint_path, state)

    def save_model(self, state: dict) -> None:
        if self.writable:
            save_torch(self.model_path, state)

    def load_checkpoint(self) -> dict:
        return self._load(self.checkpoint_path)

    def load_model(self) -> dict:
        return self._load(self.model_path)

    def _load(self, path: Path) -> dict:
        if not path.exists():
            raise UserError(f"{path} does not exist; train the run first (fixedhead train --out {self.path})")
        return load_torch(path, "weights file")


class SweepDir:
    """The --out folder of a sweep (or of the demo): one run folder per planned run, the resolved experiment,
    the report; the demo's summary and reading."""

    def __init__(self, path):
        self.path = _folder(path)
        self.experiment_path = self.path / "experiment.yaml"
        self.report_path = self.path / "report.md"
        self.csv_path = self.path / "results.csv"
        self.latex_path = self.path / "tables.tex"
        self.summary_path = self.path / "summary.json"
        self.demo_path = self.path / "demo.md"
        self.heatmaps = self.path / "class_vector_cosine"  # .png and .pdf: the runs' class-vector cosines side by side

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)

    def write_demo(self, text: str) -> None:
        write_text(self.demo_path, text)

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def runs(self) -> list[RunDir]:
        """Its run folders (those with a config), by name."""
        return [RunDir(p) for p in sorted(self.path.iterdir()) if RunDir(p).is_run()]

    def figure(self, metric: str) -> Path:
        """figure_<metric> (.png and .pdf): a metric name from an experiment file never becomes a path of its own."""
        return self.path / ("figure_" + re.sub(r"[^A-Za-z0-9_.+\[\]-]+", "_", metric).replace("..", "_"))

    def write_experiment(self, experiment: dict) -> None:
        write_yaml(self.experiment_path, experiment)


class CompareDir:
    """The --out folder of `fixedhead compare`: the table and the figures of several runs side by side."""

    def __init__(self, path):
        self.path = _folder(path)
        self.table_path = self.path / "compare.md"
        self.heatmaps = self.path / "class_vector_cosine"  # .png and .pdf
        self.severity_figure = self.path / "accuracy_vs_severity"  # .png and .pdf

    def write_table(self, table: str) -> None:
        write_text(self.table_path, table + "\n")


def precision(meta: dict) -> str | None:
    """How a run computed, from its meta.json: "bf16" or "float32" (train.bf16 auto resolves per machine),
    "bf16 + float32" when it was resumed in the other one; None when meta.json does not say."""
    resumed = meta.get("resumed")
    entries = [meta, *(resumed if isinstance(resumed, list) else [])]
    used = {entry.get("bf16") for entry in entries if isinstance(entry, dict)} & {True, False}
    return " + ".join(name for flag, name in ((True, "bf16"), (False, "float32")) if flag in used) or None


def num_classes(meta: dict) -> int | None:
    """The number of classes a run's meta.json lists, or None (no list of classes in it)."""
    classes = meta.get("classes")
    return len(classes) if isinstance(classes, list) else None
