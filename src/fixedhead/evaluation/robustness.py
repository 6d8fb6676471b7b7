"""The paper's Section 4: accuracy on corrupted test sets (Table 6) and on new test sets (Table 5).

Corrupted test sets are cached per (test images, corruption, severity, preset, seed), so evaluating
ten runs of one dataset corrupts its images once.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data
from ..data import cache
from ..errors import UserError
from ..files import atomic_write
from ..runs import RunDir
from ..tables import markdown_table
from .corruptions import CORRUPTIONS, corrupt, parameters
from .trained import TrainedRun, as_run_input, check_same_data, load_trained

CACHE_VERSION = 1  # bump when a corruption's output changes, so old cached sets are not reused


def corrupted_set(images: torch.Tensor, name: str, severity: int, preset: str, seed: int) -> torch.Tensor:
    """(N, 3, H, W) uint8 corrupted images, from the cache when this exact set was made before."""
    if images.shape[1] != 3:
        raise UserError(f"corruptions need RGB images; this dataset has {images.shape[1]} channel(s)")
    parameters(name, severity, preset)  # validate before hashing
    digest = hashlib.blake2b(images.numpy().tobytes(), digest_size=12).hexdigest()
    key = f"corrupt-v{CACHE_VERSION}-{digest}-{name}-{severity}-{preset}-{seed}"
    entry = cache.cached(key, lambda: {"images": corrupt(images, name, severity, preset, seed).numpy(),
                                       "labels": np.zeros(0, np.int64), "classes": []})
    return torch.from_numpy(np.array(entry["images"]))


def generalization_set(spec: str, trained: TrainedRun) -> data.ImageSet:
    """'cifar10.1' or 'cifar10.1:v4' (looked up in DIR given as 'cifar10.1@DIR', else the run's data
    folder) or 'folder:PATH' (PATH/<class name>/<images>), with labels mapped onto `classes`."""
    config, classes = trained.config, trained.classes
    size = config.data.image_size
    if spec.startswith("folder:"):
        return as_run_input(data.load_folder_onto(spec[len("folder:"):], classes, size), trained, spec)
    name, _, where = spec.partition("@")
    name, _, variant = name.partition(":")
    if name != "cifar10.1":
        raise UserError(f"unknown generalisation set {spec!r}; use cifar10.1[:v4][@DIR] or folder:PATH")
    new = data.load(name, where or config.data.data_dir, "test", size, variant or None)
    unknown = sorted(set(new.classes) - set(classes))
    if unknown:
        raise UserError(f"{spec} has classes the run was not trained on: {', '.join(unknown)}")
    mapping = torch.tensor([classes.index(c) for c in new.classes])
    return as_run_input(data.ImageSet(new.images, mapping[new.labels], classes), trained, spec)


def evaluate_suite(run_dir, corruptions=CORRUPTIONS, severities=(1, 2, 3, 4, 5), preset: str = "imagenet-c",
                   seed: int = 0, generalization: tuple[str, ...] | list[str] = (), device: str = "auto") -> dict:
    """Clean, corrupted and generalisation accuracy of a run; writes RUN_DIR/evaluation.json. The run is held
    (RunDir.lock) from reading its weights to writing the result, as `analyze` holds it."""
    run = RunDir(run_dir)
    with run.lock(training=False):
        trained = load_trained(run_dir, device)
        result = _measure(trained, corruptions, severities, preset, seed, generalization)
        trained.check_unchanged()
        run.write_evaluation(result)
        if result["corruptions"]:
            from .. import plots

            plots.accuracy_vs_severity({run.path.name: result}, run.evaluation_figure)
    return result


def _measure(trained: TrainedRun, corruptions, severities, preset: str, seed: int, generalization) -> dict:
    test = data.load_split(trained.config.data, "test")
    check_same_data(trained, test, f"the test split of {trained.config.data.name}")
    clean = trained.accuracy(test.images, test.labels)
    result: dict[str, Any] = {"run": str(trained.path), "num_test": len(test), "clean_acc": clean, "preset": preset,
                              "seed": seed, "corruptions": {}, "generalization": {}}
    for name in corruptions:
        per_severity = {str(s): trained.accuracy(corrupted_set(test.images, name, s, preset, seed), test.labels)
                        for s in severities}
        mean = float(np.mean(list(per_severity.values())))
        result["corruptions"][name] = {"acc": per_severity, "mean_acc": mean,
                                       "relative_drop": (clean - mean) / clean if clean else float("nan")}
    for spec in generalization:
        new = generalization_set(spec, trained)
        result["generalization"][spec] = {"acc": trained.accuracy(new.images, new.labels), "num_images": len(new)}
    return result


def table(result: dict) -> str:
    """Markdown: accuracy per corruption and severity, mean, relative drop; then generalisation sets."""
    severities = sorted({s for c in result["corruptions"].values() for s in c["acc"]}, key=int)
    lines = [f"clean accuracy {result['clean_acc']:.4f} ({result['num_test']} images)", ""]
    if severities:
        rows = [[name, *(f"{c['acc'][s]:.4f}" for s in severities), f"{c['mean_acc']:.4f}", f"{c['relative_drop']:.3f}"]
                for name, c in result["corruptions"].items()]
        lines.append(markdown_table(["corruption", *(f"s{s}" for s in severities), "mean", "relative drop"], rows))
    for spec, g in result["generalization"].items():
        lines.append(f"{spec}: accuracy {g['acc']:.4f} ({g['num_images']} images)")
    return "\n".join(lines)


def export(name: str, root, out, preset: str = "imagenet-c", seed: int = 0, corruptions=CORRUPTIONS,
           log=lambda m: print(m, file=sys.stderr)) -> list[str]:
    """CIFAR-10-C-style files: <corruption>.npy (5N, H, W, 3), severity 1 first, and labels.npy (5N,)."""
    test = data.load(name, root, "test")
    out = Path(out)
    written = []
    for corruption in corruptions:
        stacked = np.concatenate([corrupted_set(test.images, corruption, s, preset, seed).permute(0, 2, 3, 1).numpy()
                                  for s in range(1, 6)])
        atomic_write(out / f"{corruption}.npy", lambda f, a=stacked: np.save(f, a))
        written.append(f"{corruption}.npy")
        log(f"{corruption}: {stacked.shape} -> {out / (corruption + '.npy')}")
    labels = np.tile(test.labels.numpy().astype(np.int64), 5)
    atomic_write(out / "labels.npy", lambda f: np.save(f, labels))
    return written + ["labels.npy"]
