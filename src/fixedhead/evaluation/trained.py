"""A trained run's weights loaded once (TrainedRun), and scored on a split of its dataset.

Scoring, analysis and robustness all start from `load_trained`: the run's saved config is read and checked
once, and the model, class names, input shape and normalisation travel together.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import data
from ..config import Config, make_config, saved_config, to_dict
from ..data.pipeline import BatchLoader
from ..devices import resolve_device
from ..errors import UserError, reason, shown
from ..files import check_fields
from ..models.classifier import Classifier, build_model
from ..runs import RunDir
from .predict import predict, scores

# What a model.pt (or a checkpoint's "data" part) must hold to rebuild and normalise the model.
PAYLOAD_FIELDS = {"model": dict, "config": dict, "classes": list, "in_channels": int, "image_size": int,
                  "mean": list, "std": list}


@dataclass
class TrainedRun:
    """A run's weights in eval mode on `device`, with everything needed to feed them images."""

    path: Path
    model: Classifier
    config: Config
    classes: list[str]
    in_channels: int
    image_size: int
    mean: list[float]  # the training images' channel statistics, on the [0, 1] scale
    std: list[float]
    device: torch.device
    source: str  # model.pt, or the checkpoint of an unfinished run (and its epoch)
    unfinished: bool = False
    weights_file: Path | None = None  # the file the weights came from, and its stamp when they were read
    stamp: tuple | None = None

    def check_unchanged(self) -> None:
        """Refuse to write a result about these weights when their file changed since it was read (the run was
        retrained or overwritten meanwhile): the result would describe weights that no longer exist."""
        if self.weights_file is not None and _stamp(self.weights_file) != self.stamp:
            raise UserError(f"{self.weights_file} changed while it was being evaluated (trained again or overwritten); "
                            "nothing was written; run the command again")

    def loader(self, images: torch.Tensor, labels: torch.Tensor) -> BatchLoader:
        """Batches of (N, C, H, W) uint8 images normalised with the run's own training statistics."""
        return BatchLoader(images, labels, self.config.train.eval_batch_size, self.mean, self.std, device=self.device,
                           channels_last=self.config.train.channels_last)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """The run's accuracy on these images, with its own test-time augmentation."""
        out = predict(self.model, self.loader(images, labels), self.config.train.bf16, tta=self.config.train.tta)
        return scores(out)["acc"]

    def with_settings(self, overrides: dict) -> TrainedRun:
        """The same weights under other evaluation settings (train.tta, data.data_dir), validated like any config."""
        return dataclasses.replace(self, config=make_config(to_dict(self.config), overrides))


def _stamp(path: Path) -> tuple | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def _payload(run: RunDir, allow_unfinished: bool) -> tuple[dict, Path]:
    if run.has_model() or not (allow_unfinished and run.has_checkpoint()):
        path = run.model_path
        payload = {**run.load_model(), "source": path.name, "unfinished": False}
    else:
        path = run.checkpoint_path
        checkpoint = check_fields(run.load_checkpoint(), {"model": dict, "config": dict, "data": dict, "epoch": int}, path)
        payload = {"model": checkpoint["model"], "config": checkpoint["config"], **checkpoint["data"],
                   "source": f"{path.name} (unfinished run, epoch {checkpoint['epoch']})", "unfinished": True}
    check_fields(payload, PAYLOAD_FIELDS, path)
    _check_normalisation(payload, path)
    return payload, path


def load_trained(run_dir, device="cpu", allow_unfinished: bool = False) -> TrainedRun:
    """A finished run's final weights; with `allow_unfinished`, an unfinished run's last checkpoint."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run.path} is not a folder; give a run folder written by fixedhead train")
    stamps = {path: _stamp(path) for path in (run.model_path, run.checkpoint_path)}
    payload, path = _payload(run, allow_unfinished)
    config = saved_config(payload["config"], path, run.version())
    model = build_model(config.model, config.seed, len(payload["classes"]), payload["in_channels"], payload["image_size"])
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise UserError(f"the weights in {path} do not fit the model its config describes ({reason(error)})") from None
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    return TrainedRun(run.path, model.to(device).eval(), config, payload["classes"], payload["in_channels"],
                      payload["image_size"], payload["mean"], payload["std"], device, payload["source"],
                      payload["unfinished"], path, stamps[path])


def as_run_input(images: data.ImageSet, trained: TrainedRun, spec: str) -> data.ImageSet:
    """The images in the run's channels and size: grey images stored as RGB become one channel again;
    anything else that differs is an error (evaluating on other inputs measures nothing)."""
    channels, side = trained.in_channels, trained.image_size
    x = images.images
    if channels == 1 and x.shape[1] == 3:
        if not (torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])):
            raise UserError(f"{spec} holds colour images but the run was trained on 1-channel (grey) images")
        x = x[:, :1].contiguous()
    if x.shape[1] != channels or x.shape[-1] != side or x.shape[-2] != side:
        raise UserError(f"{spec} holds {x.shape[1]}x{x.shape[-2]}x{x.shape[-1]} images but the run was trained on "
                        f"{channels}x{side}x{side}; resize them (data.image_size resizes an image folder)")
    return data.ImageSet(x, images.labels, images.classes)


def check_same_data(trained: TrainedRun, images: data.ImageSet, where: str) -> None:
    """Refuse images whose class names, channels or size differ from the run's: scored against other classes
    or another input, an accuracy means nothing."""
    shape = tuple(images.images.shape[1:])
    if list(images.classes) != list(trained.classes):
        differ = next((i for i, (a, b) in enumerate(zip(trained.classes, images.classes)) if a != b),
                      min(len(trained.classes), len(images.classes)))
        ours = trained.classes[differ] if differ < len(trained.classes) else "(none)"
        theirs = images.classes[differ] if differ < len(images.classes) else "(none)"
        raise UserError(f"{where} has {len(images.classes)} classes and the run {len(trained.classes)}; class "
                        f"{differ} is {shown(theirs)} there but {shown(ours)} in the run; score on the run's dataset")
    if shape != (trained.in_channels, trained.image_size, trained.image_size):
        raise UserError(f"{where} holds {'x'.join(map(str, shape))} images but the run was trained on "
                        f"{trained.in_channels}x{trained.image_size}x{trained.image_size}")


def _check_normalisation(payload: dict, path) -> None:
    """mean and std: one finite number per channel, std above 0 (a zero std divides every image by 0)."""
    for key in ("mean", "std"):
        values = payload[key]
        if len(values) != payload["in_channels"] or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise UserError(f"{path}: {key} must hold {payload['in_channels']} finite numbers (one per channel), "
                            f"found {shown(values)}")
    if not all(v > 0 for v in payload["std"]):
        raise UserError(f"{path}: every std must be above 0, found {shown(payload['std'])}")


def open_split(run_dir, split: str = "test", device: str = "auto", data_dir=None, allow_unfinished: bool = False,
               overrides: dict | None = None) -> tuple[TrainedRun, BatchLoader]:
    """The run and a loader over one split of its dataset.

    Only that split is read: the class names, input size and normalisation come from the run itself;
    a split with other class names, channels or size is an error. `overrides` change evaluation settings of the run's config
    (e.g. train.tta) and are validated like any config."""
    settings = {**({"data.data_dir": str(data_dir)} if data_dir else {}), **(overrides or {})}
    trained = load_trained(run_dir, device, allow_unfinished).with_settings(settings)
    images = data.load_split(trained.config.data, split)
    check_same_data(trained, images, f"the {split} split of {trained.config.data.name} in "
                                     f"{trained.config.data.data_dir or 'its usual place'}")
    return trained, trained.loader(images.images, images.labels)


def evaluate_run(run_dir, split: str = "test", data_dir=None, device: str = "auto", tta: str | None = None) -> dict:
    """Re-evaluate a run's final weights on a split of its dataset (optionally found in `data_dir`),
    with the run's own test-time augmentation unless `tta` names another."""
    trained, loader = open_split(run_dir, split, device, data_dir, overrides=None if tta is None else {"train.tta": tta})
    tta = trained.config.train.tta
    return {"split": split, "tta": tta, **scores(predict(trained.model, loader, trained.config.train.bf16, tta=tta))}


def correct_on_test(run_dir, device: str = "auto") -> np.ndarray:
    """Whether the run's final weights classify each test image right (N,) bool, in the split's order and
    with the run's own test-time augmentation: what McNemar's test compares between two runs."""
    trained, loader = open_split(run_dir, "test", device)
    out = predict(trained.model, loader, trained.config.train.bf16, tta=trained.config.train.tta)
    predicted = out["logits"].argmax(1) if "logits" in out else out["predicted"]
    return (predicted == out["labels"]).numpy()
