"""Predictions and accuracy; re-evaluation of a finished run's weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import data, metrics
from ..accepted import TTA_MODES
from ..config import make_config, saved_config, upgrade
from ..data.pipeline import BatchLoader
from ..devices import autocast, resolve_device
from ..errors import UserError, reason
from ..files import check_fields
from ..models.classifier import build_model
from ..runs import RunDir


def tta_views(images: torch.Tensor, mode: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs of a normalised batch (B, C, H, W) whose logits are averaged.

    flip: the image and its mirror image, 1/2 each. shift: the image (1/2) and the image moved one pixel
    up-left and down-right (reflection-padded, 1/4 each). flip-shift: each of those and its mirror image.
    """
    if mode not in TTA_MODES:
        raise UserError(f"unknown test-time augmentation {mode!r}; choose one of: {', '.join(TTA_MODES)}")
    views = [(1.0, images)]
    if mode in ("shift", "flip-shift"):
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        views = [(0.5, images), (0.25, padded[..., 2:, 2:]), (0.25, padded[..., :-2, :-2])]
    if mode in ("flip", "flip-shift"):
        views = [(w / 2, v) for weight, view in views for w, v in ((weight, view), (weight, view.flip(3)))]
    return views


@torch.no_grad()
def predict(model, loader, bf16: bool = False, with_features: bool = False, tta: str = "none") -> dict:
    """Run `model` over a BatchLoader in eval mode: logits (N, C) float32, labels (N,), [features (N, D)].

    With `tta`, logits are the weighted mean over tta_views(); features are always the plain view's.
    A head that never forms all logits (`blockwise`, ManyClassHead) gives per-image `losses` and
    `predicted` classes instead of logits.
    """
    was_training = model.training
    model.eval()
    device = loader.labels.device
    blockwise = getattr(model.head, "blockwise", False)
    out = {key: [] for key in ("labels", *(("losses", "predicted") if blockwise else ("logits",)),
                                *(("features",) if with_features else ()))}
    for images, targets in loader.epoch():
        views = tta_views(images, tta)  # views[0] is the plain batch
        with autocast(device, bf16):
            batch_features = model.features(images)
            if blockwise:
                losses, predicted = model.head.losses_and_predictions(batch_features, targets)
                out["losses"].append(losses.cpu())
                out["predicted"].append(predicted.cpu())
            else:
                batch_logits = views[0][0] * model.head(batch_features).float()
                for weight, view in views[1:]:
                    batch_logits += weight * model(view).float()
                out["logits"].append(batch_logits.cpu())
        out["labels"].append(targets.cpu())
        if with_features:
            out["features"].append(batch_features.float().cpu())
    model.train(was_training)
    return {key: torch.cat(parts) for key, parts in out.items()}


def scores(predictions: dict) -> dict:
    """Accuracy (a fraction), mean cross-entropy and count from predict()'s output."""
    labels = predictions["labels"]
    if "logits" in predictions:
        logits = predictions["logits"]
        acc, loss = metrics.accuracy(logits, labels), F.cross_entropy(logits, labels).item()
    else:
        acc, loss = metrics.accuracy(predictions["predicted"], labels), predictions["losses"].mean().item()
    return {"acc": acc, "loss": loss, "count": len(labels)}


def check_classes(head_classes: int, data_classes: list[str], where: str) -> None:
    if head_classes != len(data_classes):
        raise UserError(
            f"the checkpoint's head has {head_classes} classes but {where} has {len(data_classes)}; "
            "evaluate on the dataset the run was trained on"
        )


# What a model.pt (or a checkpoint's "data" part) must hold to rebuild and normalise the model.
PAYLOAD_FIELDS = {"model": dict, "config": dict, "classes": list, "in_channels": int, "image_size": int,
                  "mean": list, "std": list}


def load_run_model(run_dir, device="cpu", allow_unfinished: bool = False) -> tuple:
    """(model in eval mode, payload) of a finished run; with `allow_unfinished`, an unfinished run's
    last checkpoint (payload["unfinished"] is then True and payload["source"] says which epoch)."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"{run.path} is not a folder; give a run folder written by fixedhead train")
    if run.has_model() or not (allow_unfinished and run.has_checkpoint()):
        path = run.model_path
        payload = {**run.load_model(), "source": path.name, "unfinished": False}
    else:
        path = run.checkpoint_path
        checkpoint = check_fields(run.load_checkpoint(), {"model": dict, "config": dict, "data": dict, "epoch": int}, path)
        payload = {"model": checkpoint["model"], "config": checkpoint["config"], **checkpoint["data"],
                   "source": f"{path.name} (unfinished run, epoch {checkpoint['epoch']})", "unfinished": True}
    check_fields(payload, PAYLOAD_FIELDS, path)
    config = saved_config(payload["config"])
    model = build_model(config.model, config.seed, len(payload["classes"]), payload["in_channels"], payload["image_size"])
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as error:
        raise UserError(f"the weights in {path} do not fit the model its config describes ({reason(error)})") from None
    return model.to(device).eval(), payload


def eval_loader(images: torch.Tensor, labels: torch.Tensor, payload: dict, config, device) -> BatchLoader:
    """Batches of (N, C, H, W) uint8 images normalised with the run's own training statistics."""
    return BatchLoader(images, labels, config.train.eval_batch_size, payload["mean"], payload["std"], device=device,
                       channels_last=config.train.channels_last)


def open_split(run_dir, split: str = "test", device: str = "auto", data_dir=None, allow_unfinished: bool = False,
               overrides: dict | None = None):
    """(model, payload, config, loader) for evaluating a run's weights on one split of its dataset.

    Only that split is read: the class names, input size and normalisation come from the run itself.
    A class-count mismatch is an error. `overrides` change evaluation settings of the run's config
    (e.g. train.tta) and are validated like any config."""
    device = resolve_device(device)
    model, payload = load_run_model(run_dir, device, allow_unfinished)
    config = make_config(upgrade(payload["config"]), {"data.data_dir": str(data_dir)} if data_dir else {}, overrides or {})
    images = data.load_split(config.data, split)
    check_classes(model.head.num_classes, images.classes, f"dataset {config.data.name!r}")
    return model, payload, config, eval_loader(images.images, images.labels, payload, config, device)


def evaluate_run(run_dir, split: str = "test", data_dir=None, device: str = "auto", tta: str | None = None) -> dict:
    """Re-evaluate a run's final weights on a split of its dataset (optionally found in `data_dir`),
    with the run's own test-time augmentation unless `tta` names another."""
    model, _, config, loader = open_split(run_dir, split, device, data_dir,
                                          overrides=None if tta is None else {"train.tta": tta})
    tta = config.train.tta
    return {"split": split, "tta": tta, **scores(predict(model, loader, config.train.bf16, tta=tta))}
