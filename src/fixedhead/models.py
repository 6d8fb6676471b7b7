"""Encoder registry, Classifier(encoder, head), and swapping the last layer of torchvision/timm models."""

from __future__ import annotations

import torch
from torch import nn

from . import encoders
from .errors import UserError
from .heads import ClassHead
from .many_classes import ManyClassHead

ENCODERS = {
    "resnet18": encoders.resnet18,  # CIFAR ResNet-18, 512-d (the paper's encoder)
    "resnet20": encoders.resnet20,  # CIFAR ResNet-20, 64-d
    "vgg16": encoders.VGG,  # VGG-16 with batch norm, 512-d
    "mobilenetv2": encoders.MobileNetV2,  # MobileNetV2 in CIFAR form, 1280-d
    "fastnet": encoders.fastnet,  # airbench-style 3-stage net, 256-d, for CPU work
    "fastnet-small": encoders.fastnet_small,  # half-width fastnet, 128-d, about 3x faster
    "fastnet-wide": encoders.fastnet_wide,  # ResNet-9 widths, 512-d: the fast encoder for GPUs
}


def build_encoder(name: str, in_channels: int = 3, image_size: int = 32, pool: str = "avg") -> nn.Module:
    """An encoder from the registry; it has a `num_features` attribute."""
    if name not in ENCODERS:
        raise UserError(f"unknown arch {name!r}; choose one of: {', '.join(ENCODERS)}")
    if pool != "avg" and not name.startswith("resnet"):
        raise UserError(f"pool {pool!r} is offered for resnet18/resnet20 only; use pool 'avg' with {name}")
    if name.startswith("resnet"):
        return ENCODERS[name](in_channels=in_channels, pool=pool, image_size=image_size)
    return ENCODERS[name](in_channels=in_channels)


class Projected(nn.Module):
    """An encoder followed by a linear map to `num_features` features (2 gives the paper's Fig. 3 and 5)."""

    def __init__(self, encoder: nn.Module, num_features: int):
        super().__init__()
        self.encoder, self.project = encoder, nn.Linear(encoder.num_features, num_features)
        self.num_features = num_features

    def forward(self, x):
        return self.project(self.encoder(x))


NECKS = ("none", "bn")  # model.neck


class Neck(nn.Module):
    """An encoder followed by batch norm over its features (affine), so they take both signs before the
    head. Pooled ReLU/GELU features are (almost) all >= 0, which caps cos(f, w) at ||w+||, about 0.71
    for random unit w (docs/results.md, compactness); centred features are not capped."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.norm = encoder, nn.BatchNorm1d(encoder.num_features)
        self.num_features = encoder.num_features

    def forward(self, x):
        return self.norm(self.encoder(x))


class Classifier(nn.Module):
    """An encoder followed by a ClassHead (or ManyClassHead): features(x) (B, D), forward(x) logits (B, C)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, label_smoothing: float = 0.0):
        """Logits (B, C); with `labels`, (mean cross-entropy, arg-max classes) instead, which the head may
        compute without forming the logits (ManyClassHead). Both go through forward, as DDP needs."""
        if labels is None:
            return self.head(self.encoder(x))
        return self.head.loss_and_predictions(self.encoder(x), labels, label_smoothing)


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name, module
    if found is None:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer to replace with a ClassHead")
    name, linear = found
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return parent, name.rpartition(".")[2], linear


def swap_head(model: nn.Module, num_classes: int | None = None, **head_kwargs) -> Classifier:
    """Replace the classification layer of a torchvision or timm classifier by a ClassHead.

    timm models (those with `reset_classifier` and `num_features`) keep their own pooling and
    pre-logits path: `reset_classifier(0)` makes forward return pre-logit features. For other models
    the last nn.Linear is replaced by nn.Identity, so the model outputs what that layer received.
    `num_classes` defaults to the replaced layer's; `head_kwargs` go to ClassHead.
    """
    if hasattr(model, "reset_classifier") and hasattr(model, "num_features"):
        num_classes = num_classes or model.num_classes
        model.reset_classifier(0)
        num_features = model.num_features
        if hasattr(model, "head_hidden_size"):  # timm >= 1.0: pre-logits width may differ
            num_features = model.head_hidden_size
    else:
        parent, attr, linear = _last_linear(model)
        num_classes, num_features = num_classes or linear.out_features, linear.in_features
        setattr(parent, attr, nn.Identity())
    return Classifier(model, ClassHead(num_features, num_classes, **head_kwargs))


def build_model(model_cfg, seed: int, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """The Classifier a run's model config describes; the encoder is initialised from torch's seed,
    the class vectors from their own generator (model_cfg.head_seed, else `seed`)."""
    torch.manual_seed(seed)
    encoder = build_encoder(model_cfg.arch, in_channels, image_size, model_cfg.pool)
    if model_cfg.num_features is not None:
        encoder = Projected(encoder, model_cfg.num_features)
    if model_cfg.neck == "bn":
        encoder = Neck(encoder)
    head_seed = seed if model_cfg.head_seed is None else model_cfg.head_seed
    if model_cfg.vectors != "stored":
        head = ManyClassHead(encoder.num_features, num_classes, similarity=model_cfg.similarity, scale=model_cfg.scale,
                             init=model_cfg.init, seed=head_seed, vectors=model_cfg.vectors)
    else:
        head = ClassHead(
            encoder.num_features, num_classes, similarity=model_cfg.similarity, fixed=model_cfg.fixed,
            scale=model_cfg.scale, learn_scale=model_cfg.learn_scale, init=model_cfg.init, bias=model_cfg.bias,
            seed=head_seed,
        )
    return Classifier(encoder, head)
