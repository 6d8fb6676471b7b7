"""A model's predictions over a loader (with test-time augmentation), and the scores made from them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import metrics
from ..data.pipeline import tta_views
from ..devices import autocast


@torch.no_grad()
def predict(model, loader, bf16: bool | str = False, with_features: bool = False, tta: str = "none") -> dict:
    """Run `model` over a BatchLoader in eval mode: logits (N, C) float32, labels (N,), [features (N, D)].

    With `tta`, logits are the weighted mean over tta_views(); features are always the plain view's.
    A head that never forms all logits (`blockwise`, ManyClassHead) gives per-image `losses` and
    `predicted` classes instead of logits.
    """
    was_training = model.training
    model.eval()
    device = loader.labels.device
    blockwise = getattr(model.head, "blockwise", False)
    out: dict[str, list] = {key: [] for key in ("labels", *(("losses", "predicted") if blockwise else ("logits",)),
                                *(("features",) if with_features else ()))}
    for images, targets in loader.epoch():
        views = tta_views(images, tta)  # views[0] is the plain batch
        with autocast(device, bf16):
            batch_features = model.forward_features(images)
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
    """Accuracy (a fraction), mean cross-entropy and count from predict()'s output, and the top-5 accuracy
    (`top5_acc`) where the logits were formed over more than 5 classes."""
    labels = predictions["labels"]
    if "logits" not in predictions:
        return {"acc": metrics.accuracy(predictions["predicted"], labels), "loss": predictions["losses"].mean().item(),
                "count": len(labels)}
    logits = predictions["logits"]
    top_k = ({f"top{metrics.TOP_K}_acc": metrics.top_k_accuracy(logits, labels)}
             if logits.shape[1] > metrics.TOP_K else {})
    return {"acc": metrics.accuracy(logits, labels), **top_k, "loss": F.cross_entropy(logits, labels).item(),
            "count": len(labels)}
