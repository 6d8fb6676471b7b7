"""A trained run as a model to take away: `Deployable` (normalisation, encoder and head in one module,
float images in [0, 1] -> logits), written as ONNX, TorchScript or safetensors; and the top-k classes of
image files (`fixedhead predict`).

The exported model computes the run's logits of the plain view in float32: no test-time augmentation
(train.tta) and no bf16 autocast, whatever the run was scored with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import data
from ..data.imagefolder import decode_images
from ..errors import UserError, shown
from ..files import check_regular, write_json
from ..runs import EXPORTS, RunDir
from .trained import TrainedRun, as_run_input, load_trained


class Deployable(nn.Module):
    """A run's classifier with its input normalisation: (N, C, H, W) float images in [0, 1] -> (N, classes)
    logits. `classes` names the columns."""

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, classifier: nn.Module, mean: list[float], std: list[float], classes: list[str]):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.classes = list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier((images - self.mean) / self.std)


def deployable(trained: TrainedRun) -> Deployable:
    """The run's weights as a Deployable on the CPU, in eval mode; a head that never forms all logits is refused."""
    head = trained.model.head
    if getattr(head, "blockwise", False):
        raise UserError(f"this run's head (model.vectors={trained.config.model.vectors}, {head.num_classes} classes) "
                        "never forms all logits at once, so it has no plain model to export; score it with "
                        "fixedhead score")
    return Deployable(trained.model.float().cpu(), trained.mean, trained.std, trained.classes).eval()


def _metadata(trained: TrainedRun) -> dict:
    return {"classes": trained.classes, "input": [trained.in_channels, trained.image_size, trained.image_size],
            "input_range": "float32 in [0, 1]", "mean": trained.mean, "std": trained.std,
            "source": f"{trained.path.name}/{trained.source}"}


def export_run(run_dir, fmt: str, out=None) -> Path:
    """Write the run's Deployable as `fmt` to `out` (default: RUN_DIR/export/, runs.EXPORTS names the file)
    and its classes and input beside it (the same name + .json); returns the model's path. An
    existing `out` is never replaced (the run's own export folder is ours to rewrite)."""
    if fmt not in EXPORTS:
        raise UserError(f"unknown export format {shown(fmt)}; choose one of: {', '.join(EXPORTS)}")
    run = RunDir(run_dir)
    with run.lock(training=False):
        trained = load_trained(run_dir, "cpu")
        model = deployable(trained)
        if out is None:
            path = run.export_folder() / EXPORTS[fmt]
        else:
            path = Path(out)
            for taken in (path, path.with_name(path.name + ".json")):
                if taken.exists() or taken.is_symlink():
                    raise UserError(f"{taken} exists; give --out a new file name (export replaces nothing but its "
                                    "own files in the run's export/ folder)")
        example = torch.rand(2, trained.in_channels, trained.image_size, trained.image_size)
        meta = _metadata(trained)
        temporary = path.with_name(f".{path.name}.partial")
        try:
            _WRITERS[fmt](model, example, temporary, meta)
            trained.check_unchanged()
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)
        write_json(path.with_name(path.name + ".json"), {**meta, "format": fmt, "model": path.name})
    return path


def _onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise UserError("--format onnx needs onnx and onnxscript: pip install 'fixedhead[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(model, (example,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False)
    if program is None:  # dynamo=True always gives one
        raise UserError("torch.onnx.export returned no program")
    program.save(str(path))


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    scripted = torch.jit.trace(model, example)
    torch.jit.save(scripted, str(path), _extra_files={"fixedhead.json": json.dumps(meta)})


def _safetensors(model: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("--format safetensors needs safetensors: pip install 'fixedhead[export]'") from None
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"fixedhead": json.dumps(meta)})


MAX_PREDICT = 100_000  # image files one `fixedhead predict` decodes at once

_WRITERS = {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}


def predict_files(run_dir, paths: list, top_k: int = 5) -> list[dict]:
    """The top-k classes and their softmax probabilities for each image file, decoded and resized to the
    run's image size as an image folder's are (grey images stored as RGB become one channel for a grey run)."""
    trained = load_trained(run_dir, "cpu")
    files = [check_regular(Path(p), "image") for p in paths]
    images = torch.from_numpy(decode_images(files, trained.image_size))
    images = as_run_input(data.ImageSet(images, torch.zeros(len(files), dtype=torch.int64), trained.classes),
                          trained, "an image among these").images
    with torch.no_grad():
        probabilities = deployable(trained)(images.float() / 255).softmax(1)
    top = probabilities.topk(min(top_k, len(trained.classes)), dim=1)
    return [{"image": str(path), "top": [{"class": trained.classes[c], "probability": p}
                                          for c, p in zip(indices.tolist(), values.tolist())]}
            for path, values, indices in zip(paths, top.values, top.indices)]
