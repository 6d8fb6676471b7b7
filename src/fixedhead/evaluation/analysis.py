"""Run folder -> features and predictions (computed once) -> the paper's numbers -> analysis.json + figures."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .. import metrics
from ..errors import UserError
from ..files import check_fields
from ..heads import ClassHead
from ..runs import CompareDir, RunDir
from ..tables import markdown_table
from .trained import open_split, predict

TSNE_MAX_POINTS = 3000


def run_outputs(run_dir, split: str = "test", device: str = "auto") -> dict:
    """Features, logits and labels of a run on one split, with the head's class vectors."""
    trained, loader = open_split(run_dir, split, device, allow_unfinished=True)
    head = trained.model.head
    if getattr(head, "blockwise", False):
        raise UserError(f"the analysis compares every pair of classes (C x C matrices), which a run with "
                        f"model.vectors={trained.config.model.vectors} ({head.num_classes} classes) is made to avoid; "
                        "fixedhead score gives its accuracy")
    out = predict(trained.model, loader, trained.config.train.bf16, with_features=True)
    out.update(weight=head.vectors().cpu(), classes=trained.classes, source=trained.source,
               train_counts=_train_counts(trained),
               unfinished=trained.unfinished, trained=trained,
               head={"similarity": head.similarity, "fixed": head.fixed, "init": head.init,
                     "scale": head.scale.item(), "num_features": head.num_features})
    return out


def _train_counts(trained) -> list[int] | None:
    """The run's training images per class, as final.json recorded them (None for an unfinished run or one
    trained before they were recorded): what minority collapse is measured against."""
    counts = (RunDir(trained.path, writable=False).final() or {}).get("train_class_counts")
    ok = isinstance(counts, list) and len(counts) == len(trained.classes) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)
    return counts if ok else None


def measure(outputs: dict) -> dict:
    """Every number of the paper's Sections 2-3 from run_outputs()."""
    features, labels, weight = outputs["features"], outputs["labels"], outputs["weight"]
    if len(weight) < 2:
        raise UserError(f"the run has {len(weight)} class; its measurements compare classes, so they need two or more")
    predicted = outputs["logits"].argmax(1)
    cosines = metrics.cosine_matrix(weight)
    confusion = metrics.confusion_matrix(labels, predicted, len(weight))
    return {
        "acc": metrics.accuracy(outputs["logits"], labels), "num_images": len(labels),
        **metrics.similarity_confusion_spearman(cosines, confusion),
        **metrics.confused_pair_auc(cosines, confusion),
        **metrics.compactness(features, weight, labels, predicted),
        **metrics.separability(weight, features, labels),
        **metrics.neural_collapse(features, labels, weight, outputs["logits"], outputs.get("train_counts")),
        "class_vector_cosine": cosines.numpy(), "confusion": confusion.numpy(),
    }


def _pictures(outputs: dict, result: dict, folder: Path, tsne: bool, cluster: bool) -> list[str]:
    from .. import plots  # matplotlib only when a figure is drawn

    classes, cosines = outputs["classes"], result["class_vector_cosine"]
    order = metrics.cluster_order(torch.tensor(cosines)) if cluster else list(range(len(classes)))
    files = plots.class_vector_heatmap(cosines[np.ix_(order, order)], [classes[k] for k in order],
                                       folder / "class_vector_cosine", "cos(w_i, w_j)" + (" (clustered)" if cluster else ""))
    off = ~np.eye(len(cosines), dtype=bool)
    files += plots.similarity_confusion_scatter(cosines[off], result["confusion"][off],
                                                result["spearman_rho"], folder / "similarity_vs_confusion")
    files += plots.confusion_heatmap(result["confusion"][np.ix_(order, order)], [classes[k] for k in order],
                                     folder / "confusion")
    counts = outputs.get("train_counts")
    if counts is not None and len(set(counts)) > 1:
        accuracies = metrics.class_accuracies(outputs["logits"].argmax(1), outputs["labels"], len(classes))
        files += plots.accuracy_vs_count(accuracies, counts, folder / "accuracy_vs_training_images")
    features, labels = outputs["features"], outputs["labels"].numpy()
    if features.shape[1] == 2:  # the paper's way: raw 2-d features with the class vectors as rays
        return files + plots.feature_scatter(features.numpy(), labels, classes, folder / "features_2d",
                                             "2-d features and class vectors", rays=outputs["weight"].numpy())
    centred = features.double() - features.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    explained = (s[:2] ** 2 / (s**2).sum() * 100).tolist()
    files += plots.feature_scatter((centred @ v[:2].T).numpy(), labels, classes, folder / "features_pca",
                                   "features, first two principal components",
                                   axes=(f"PC 1 ({explained[0]:.0f}% of variance)",
                                         f"PC 2 ({explained[1]:.0f}% of variance)"))
    if tsne:
        from sklearn.manifold import TSNE

        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:TSNE_MAX_POINTS]
        points = TSNE(n_components=2, init="pca", random_state=0).fit_transform(features[keep].numpy())
        files += plots.feature_scatter(points, labels[keep.numpy()], classes, folder / "features_tsne",
                                       f"t-SNE of {len(keep)} test features", axes=("t-SNE 1", "t-SNE 2"))
    return files


def classifier_head(model: nn.Module) -> nn.Module:
    """The module that turns features into logits: a fixedhead head (model.head, or the last one anywhere in
    the model, e.g. inside a LightningModule), timm's get_classifier(), or the model's last nn.Linear
    (torchvision's fc / classifier / heads)."""
    head = getattr(model, "head", None)
    if isinstance(head, ClassHead):
        return head
    getter = getattr(model, "get_classifier", None)
    found = getter() if callable(getter) else None
    if isinstance(found, (nn.Linear, ClassHead)):
        return found
    heads = [m for m in model.modules() if isinstance(m, ClassHead)]  # a Classifier inside a wrapper module
    if heads:
        return heads[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("the model has no classification layer to measure (no fixedhead head, no nn.Linear)")
    return linears[-1]


def measure_model(model: nn.Module, loader) -> dict:
    """The paper's measurements (`measure`) for any classifier whose last layer is a fixedhead head or an
    nn.Linear, over a loader of (images, labels) batches (a torch DataLoader, already normalised), in eval
    mode on the model's device: the features are what enters that layer (a forward hook), the class
    vectors its weight."""
    head = classifier_head(model)
    device = next(model.parameters()).device
    captured: dict = {}
    hook = head.register_forward_hook(lambda module, args, out: captured.update(features=args[0], logits=out))
    parts: dict = {"features": [], "logits": [], "labels": []}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in loader:
                model(images.to(device))
                for key, value in (("features", captured["features"]), ("logits", captured["logits"]),
                                   ("labels", labels)):
                    parts[key].append(value.detach().float().cpu() if key != "labels" else value.cpu())
    finally:
        hook.remove()
        model.train(was_training)
    weight = head.vectors().cpu() if isinstance(head, ClassHead) else cast(torch.Tensor, head.weight).detach().float().cpu()
    outputs = {key: torch.cat(value) for key, value in parts.items()} | {"weight": weight}
    return measure(outputs)


def analyze(run_dir, split: str = "test", device: str = "auto", tsne: bool = False, cluster: bool = False,
            loader=None) -> dict:
    """Measure a run and write RUN_DIR/analysis/analysis.json plus PNG and PDF figures. The run is held
    (RunDir.lock) from reading its weights to writing the record: a training into it meanwhile is refused,
    and one already running makes this refused. Weights replaced by other means are caught by their stamp.

    `analyze(model, loader)` measures a model of your own trainer instead (measure_model): the numbers,
    nothing written."""
    if isinstance(run_dir, nn.Module):
        if loader is None:
            raise UserError("analyze(model, loader): give the loader of (images, labels) batches to measure on")
        return measure_model(run_dir, loader)
    run = RunDir(run_dir)
    with run.lock(training=False):
        outputs = run_outputs(run_dir, split, device)
        result = {"run": str(run_dir), "split": split, "source": outputs["source"],
                  "unfinished": outputs["unfinished"], "classes": outputs["classes"],
                  "head": outputs["head"], **measure(outputs)}
        outputs["trained"].check_unchanged()
        result["figures"] = _pictures(outputs, result, run.analysis_folder(), tsne, cluster)
        outputs["trained"].check_unchanged()  # the figures took a while: check again right before the record
        run.write_matrices({key: result[key] for key in MATRICES})
        run.write_analysis({key: value for key, value in result.items() if key not in MATRICES})
    return result


SUMMARY_KEYS = ("acc", "spearman_rho", "mean_cos_to_predicted", "mean_cos_to_true", "class_vector_cos_max",
                "class_mean_cos_max", "within_class_cos", "scatter_ratio")
ANALYSIS_FIELDS = {key: (int, float) for key in SUMMARY_KEYS}
MATRICES = ("class_vector_cosine", "confusion")  # C x C: in matrices.pt beside analysis.json (inline before)


def load_or_analyze(run_dir, split: str = "test", device: str = "auto") -> dict:
    """The run's analysis.json when it exists for `split`, else a fresh analysis."""
    run = RunDir(run_dir)
    result = run.read_analysis()
    if result is not None:
        check_fields(result, {"split": str, "classes": list, **ANALYSIS_FIELDS}, run.analysis_path)
    if result is None or result["split"] != split:
        return analyze(run_dir, split, device)
    if all(key in result for key in MATRICES):  # written before matrices.pt existed
        check_fields(result, dict.fromkeys(MATRICES, list), run.analysis_path)
        return {**result, **{key: np.array(result[key], dtype=float) for key in MATRICES}}
    matrices = run.read_matrices(MATRICES, len(result["classes"]))
    return analyze(run_dir, split, device) if matrices is None else {**result, **matrices}


def compare(run_dirs: list, out=None, split: str = "test", device: str = "auto") -> dict:
    """Several runs side by side: a Markdown table of their numbers and one figure of their heatmaps."""
    from .. import plots

    if len(run_dirs) < 1:
        raise UserError("compare needs at least one run folder")
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) < len(names):  # same folder names in different places: use the full paths
        names = [str(r) for r in run_dirs]
    results = {name: load_or_analyze(r, split, device) for name, r in zip(names, run_dirs)}
    rows = [[name, *(f"{r[k]:.3f}" for k in SUMMARY_KEYS)] for name, r in results.items()]
    table = markdown_table(["run", *SUMMARY_KEYS], rows)
    figures = []
    if out is not None:
        panels = {name: (r["class_vector_cosine"], r["classes"]) for name, r in results.items()}
        folder = CompareDir(out)
        figures = plots.heatmap_grid(panels, folder.heatmaps)
        read = {name: RunDir(r).read_evaluation() for name, r in zip(names, run_dirs)}
        loaded = {name: e for name, e in read.items() if e}
        if len(loaded) == len(read) and all(e["corruptions"] for e in loaded.values()):  # every run evaluated
            figures += plots.accuracy_vs_severity(loaded, folder.severity_figure)
        folder.write_table(table)
    return {"table": table, "figures": figures, "runs": {n: {k: r[k] for k in SUMMARY_KEYS} for n, r in results.items()}}
