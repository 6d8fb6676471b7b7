"""Experiment trackers: what `fit` reports after each epoch, to TensorBoard, Weights & Biases or any
callable.

The contract is one callable: `fit(..., callbacks=[cb])` calls `cb(record)` after every epoch with
that epoch's record (the line of metrics.jsonl: epoch, lr, train_loss, train_acc, val_*, and the head's
numbers, `head_cos_mean`/`head_cos_max` between class vectors and the logit scale `head_scale`), and
`cb.close(final)` at the end if the callable has a `close` method (final.json's dict; None when training
stopped early). Only the main process calls them under torchrun. The trackers below import their
package only when used (extras `fixedhead[tensorboard]`, `fixedhead[wandb]`).
"""

from __future__ import annotations

import os
import sys
import time

import torch

from . import metrics
from .errors import UserError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")  # train.log


def head_numbers(head) -> dict:
    """Mean and largest cosine between two distinct class vectors, and the head's logit scale S (float)."""
    numbers = {"head_scale": head.scale.detach().item()}
    vectors = getattr(head, "weight", None)
    if not isinstance(vectors, torch.Tensor) or not 2 <= len(vectors) <= 4096:  # a many-class head: too costly
        return numbers
    off = metrics.off_diagonal(metrics.cosine_matrix(vectors.detach()))
    return {**numbers, "head_cos_mean": off.mean().item(), "head_cos_max": off.max().item()}


def check_tracker(kind: str) -> None:
    """Refuse train.log naming a tracker whose package is missing (before anything is written)."""
    import importlib.util

    if kind != "none" and importlib.util.find_spec(kind) is None:
        raise UserError(f"train.log={kind} needs the {kind} package: pip install 'fixedhead[{kind}]'")


def _tag(key: str) -> str:
    """TensorBoard groups tags by their first part: train/loss, val/acc, head/cos_mean; others stay whole."""
    first, _, rest = key.partition("_")
    return f"{first}/{rest}" if first in ("train", "val", "test", "head") and rest else key


class TensorBoard:
    """Per-epoch scalars into the run's tensorboard folder (view: tensorboard --logdir RUN_OR_SWEEP_FOLDER)."""

    def __init__(self, run, config: dict):
        check_tracker("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.tensorboard_dir))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in config.items()))

    def __call__(self, record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(_tag(key), value, record["epoch"])
        self.writer.flush()

    def close(self, final: dict | None) -> None:
        if final:
            for key in ("test_acc", "test_loss"):
                if isinstance(final.get(key), (int, float)):
                    self.writer.add_scalar(_tag(key), final[key], final["epochs"])
        self.writer.close()


class WandB:
    """Per-epoch metrics to a Weights & Biases run named after the run folder (its own settings,
    e.g. WANDB_PROJECT and WANDB_MODE=offline, come from the environment)."""

    def __init__(self, run, config: dict):
        check_tracker("wandb")
        import wandb

        self.run = wandb.init(name=run.path.name, dir=str(run.path), config=config,
                                   project=None, reinit=True)

    def __call__(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])

    def close(self, final: dict | None) -> None:
        if final:
            self.run.summary.update({k: v for k, v in final.items() if isinstance(v, (int, float, str))})
        self.run.finish()


class MLflow:
    """Per-epoch metrics and the config as parameters to an MLflow run named after the run folder, through
    an MlflowClient (no global active run): the server MLFLOW_TRACKING_URI names, else a local file store in
    RUN_DIR/mlruns (nothing written outside the run; `mlflow ui --backend-store-uri RUN_DIR/mlruns`); the
    experiment MLFLOW_EXPERIMENT_NAME, else fixedhead."""

    def __init__(self, run, config: dict):
        check_tracker("mlflow")
        import mlflow
        from mlflow.entities import Param

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # MLflow's file store (in maintenance, still read by `mlflow ui`): no database to install
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = mlflow_store(run).resolve().as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fixedhead")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=run.path.name).info.run_id
        params = [Param(key, str(value)[:500]) for key, value in config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def __call__(self, record: dict) -> None:
        self._log(record, record["epoch"])

    def close(self, final: dict | None) -> None:
        if final:
            self._log({k: final[k] for k in ("test_acc", "test_loss") if k in final}, final["epochs"])
        self.client.set_terminated(self.run_id, "FINISHED" if final else "KILLED")


def mlflow_store(run):
    """Where train.log=mlflow keeps its local store when no MLFLOW_TRACKING_URI names a server."""
    return run.path / "mlruns"


def check_tracker_folder(kind: str, run) -> None:
    """Refuse, before anything of the run is written, a tracker folder that its writer would fail on halfway
    (a read-only one: TensorBoard's writer thread fails after training started) or that sends its writes
    out of the run folder (a link)."""
    folder = {"tensorboard": run.tensorboard_dir, "wandb": run.path / "wandb", "mlflow": mlflow_store(run)}.get(kind)
    if folder is None:
        return
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UserError(f"{folder} is a link or a file, not a folder of this run; remove it (train.log={kind} "
                        "writes there)")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{folder} is not writable and train.log={kind} writes there; make it writable, or "
                        "train with --set train.log=none")


def open_tracker(kind: str, run, config: dict):
    """The tracker train.log names for a run folder (a RunDir), or None."""
    return None if kind == "none" else {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}[kind](run, config)


class Progress:
    """A sweep's line per epoch, `[3/12] name  epoch 2/4  loss 1.2345  val_acc 0.6789  41 s`, to `log`."""

    def __init__(self, prefix: str, epochs: int | None, log=lambda line: print(line, file=sys.stderr, flush=True)):
        self.prefix, self.epochs, self.log = prefix, epochs, log

    def __call__(self, record: dict) -> None:
        val = f"  val_acc {record['val_acc']:.4f}" if "val_acc" in record else ""
        of = f"/{self.epochs}" if self.epochs else ""
        self.log(f"{self.prefix}  epoch {record['epoch']}{of}  loss {record['train_loss']:.4f}{val}  "
                 f"{record['epoch_time_s']:.0f} s")
