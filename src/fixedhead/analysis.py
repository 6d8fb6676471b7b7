"""Run folder -> features and predictions -> the paper's numbers."""

from __future__ import annotations

from . import metrics
from .config import make_config
from .data.loaders import prepare
from .evaluate import check_classes, load_run_model, predict, resolve_device


def measure(run_dir, split: str = "test", device: str = "auto") -> dict:
    """Accuracy, compactness and class-vector measures of a finished run on one split."""
    device = resolve_device(device)
    model, payload = load_run_model(run_dir, device)
    config = make_config(payload["config"])
    data = prepare(config.data, seed=config.seed, batch_size=config.train.batch_size,
                   eval_batch_size=config.train.eval_batch_size, device=device, splits=(split,),
                   stats=(payload["mean"], payload["std"]))
    check_classes(model.head.num_classes, data["classes"], f"dataset {config.data.name!r}")
    out = predict(model, data[split], config.train.bf16, with_features=True)
    weight = model.head.weight.detach().cpu()
    predicted = out["logits"].argmax(1)
    cosines = metrics.cosine_matrix(weight)
    confusion = metrics.confusion_matrix(out["labels"], predicted, len(weight))
    return {
        "acc": (predicted == out["labels"]).double().mean().item(),
        "mean_cos_to_predicted": metrics.mean_cos_to_class(out["features"], weight, predicted),
        "max_class_vector_cos": metrics.max_off_diagonal(cosines),
        **metrics.similarity_confusion_spearman(cosines, confusion),
        "num_images": len(predicted),
    }
