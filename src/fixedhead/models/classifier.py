"""Encoder registry, Classifier(encoder, head), and swapping the last layer of torchvision/timm models."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, cast

import torch
from torch import nn

from ..errors import UserError
from ..heads.class_head import ClassHead
from ..heads.many_classes import ManyClassHead
from . import encoders, zoo

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": encoders.resnet18,  # CIFAR ResNet-18, 512-d (the paper's encoder)
    "resnet20": encoders.resnet20,  # CIFAR ResNet-20, 64-d
    "vgg16": encoders.VGG,  # VGG-16 with batch norm, 512-d
    "mobilenetv2": encoders.MobileNetV2,  # MobileNetV2 in CIFAR form, 1280-d
    "fastnet": encoders.fastnet,  # airbench-style 3-stage net, 256-d, for CPU work
    "fastnet-small": encoders.fastnet_small,  # half-width fastnet, 128-d, about 3x faster
    "fastnet-wide": encoders.fastnet_wide,  # ResNet-9 widths, 512-d: the fast encoder for GPUs
    "airnet": encoders.AirNet,  # airbench93's network (2x2 whitening stem, 64-128-128), 128-d: the CPU speed recipe
    "airnet-small": encoders.airnet_small,  # airnet at 3/4 width (48-96-96), 96-d, about 0.6x its multiply-adds
}


def build_encoder(name: str, in_channels: int = 3, image_size: int = 32, pool: str = "avg",
                  pretrained: bool = False) -> nn.Module:
    """An encoder from the registry, or a timm/torchvision model by `timm:NAME` / `torchvision:NAME`
    (zoo.py; `pretrained` asks for the library's weights); it has a `num_features` attribute."""
    if zoo.is_library_arch(name):
        if pool != "avg":
            raise UserError(f"pool {pool!r} is offered for resnet18/resnet20 only; {name} keeps its own pooling")
        return zoo.build(name, in_channels, image_size, pretrained)
    if pretrained:
        raise UserError(f"model.pretrained is for timm:NAME and torchvision:NAME models; {name} has no pretrained weights")
    if name not in ENCODERS:
        raise UserError(f"unknown arch {name!r}; choose one of: {', '.join(ENCODERS)}, timm:NAME, torchvision:NAME")
    if pool != "avg" and not name.startswith("resnet"):
        raise UserError(f"pool {pool!r} is offered for resnet18/resnet20 only; use pool 'avg' with {name}")
    if name.startswith("resnet"):
        return ENCODERS[name](in_channels=in_channels, pool=pool, image_size=image_size)
    return ENCODERS[name](in_channels=in_channels)


def width(encoder: nn.Module) -> int:
    """The width of an encoder's features: its `num_features` (every encoder here has one, as timm's do)."""
    return cast(int, encoder.num_features)


class Projected(nn.Module):
    """An encoder followed by a linear map to `num_features` features (2 gives the paper's Fig. 3 and 5)."""

    def __init__(self, encoder: nn.Module, num_features: int):
        super().__init__()
        self.encoder, self.project = encoder, nn.Linear(width(encoder), num_features)
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
        self.encoder, self.norm = encoder, nn.BatchNorm1d(width(encoder))
        self.num_features = width(encoder)

    def forward(self, x):
        return self.norm(self.encoder(x))


def _prefixed_matcher(matcher: dict, prefix: str) -> dict:
    """A timm group_matcher ({group: regex or [(regex, suffix), ...]}) for parameters named `prefix` +
    the encoder's names. timm matches at the start of the name, so every top-level alternative of a
    regex starts after the prefix; the groups keep their numbers (the prefix adds none)."""
    def move(regex: str) -> str:
        return rf"^{re.escape(prefix)}(?:" + re.sub(r"(^|(?<!\\)\|)\^", r"\1", regex) + ")"
    return {group: None if spec is None else [(move(r), suffix) for r, suffix in spec]
            if isinstance(spec, (list, tuple)) else move(spec) for group, spec in matcher.items()}


# timm's model hooks, answered for the encoder's parameters under the "encoder." prefix, so that
# timm's optimizer factory, layer decay, data config and gradient checkpointing see the wrapped model
# as they see the bare one.
_ENCODER_HOOKS = {
    "no_weight_decay": lambda hook: lambda: {f"encoder.{name}" for name in hook()},
    "group_matcher": lambda hook: lambda coarse=False: _prefixed_matcher(hook(coarse=coarse), "encoder."),
    "set_grad_checkpointing": lambda hook: hook,
    "pretrained_cfg": lambda value: value,
    "default_cfg": lambda value: value,
}


class Classifier(nn.Module):
    """An encoder followed by a ClassHead (or ManyClassHead), in timm's model contract: forward_features(x)
    gives features (B, D), forward_head(features) logits (B, C), forward(x) both; num_features, num_classes,
    get_classifier() and reset_classifier(num_classes) as in timm. loss(x, labels) is the training loss.

    timm's hooks of the encoder (no_weight_decay, group_matcher, set_grad_checkpointing,
    pretrained_cfg, default_cfg) are answered by the Classifier with the `encoder.` prefix."""

    if TYPE_CHECKING:  # for type checkers only: TorchScript takes no nn.Module annotations
        encoder: nn.Module
        head: Any  # a ClassHead, a ManyClassHead, another head module, or nn.Identity once removed
        num_features: int

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.num_features = cast(int, getattr(head, "num_features", getattr(encoder, "num_features", None)))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _ENCODER_HOOKS:
                encoder = super().__getattr__("encoder")
                if hasattr(encoder, name):
                    return _ENCODER_HOOKS[name](getattr(encoder, name))
            raise

    @property
    def num_classes(self) -> int:
        return getattr(self.head, "num_classes", 0)  # 0: the head was removed (reset_classifier(0))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, C_in, H, W) -> (B, D)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.head(features)  # (B, D) -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def loss(self, x: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
        """(mean cross-entropy, arg-max classes) of a batch, which a ManyClassHead computes without forming
        the logits. Under DDP or torch.compile, call it through a module whose forward it is (training.epoch)."""
        return self.head.loss_and_predictions(self.forward_features(x), labels, label_smoothing)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, **head_kwargs) -> None:
        """A new head of the same kind and settings for `num_classes` classes (`head_kwargs` override the
        settings); 0 removes the head, so that forward returns the features, as in timm."""
        if num_classes == 0:
            self.head = nn.Identity()
            return
        settings = {**(self.head.settings() if hasattr(self.head, "settings") else {}), **head_kwargs}
        kind = type(self.head) if hasattr(self.head, "settings") else ClassHead
        self.head = kind(self.num_features, num_classes, **settings)


def swap_head(model: nn.Module, num_classes: int | None = None, **head_kwargs) -> Classifier:
    """Replace the classification layer of a torchvision or timm classifier by a ClassHead.

    timm models (those with `reset_classifier` and `num_features`) keep their own pooling and
    pre-logits path: `reset_classifier(0)` makes forward return pre-logit features. For other models
    the last nn.Linear is replaced by nn.Identity, so the model outputs what that layer received.
    `num_classes` defaults to the replaced layer's; `head_kwargs` go to ClassHead. A Hugging Face
    transformers model (which returns an output object, not a tensor) is wrapped so that the encoder
    returns that object's `logits` field, which holds the features once the classifier is an identity.
    """
    if hasattr(model, "reset_classifier") and hasattr(model, "num_features"):
        timm_model: Any = model  # timm's contract: attributes nn.Module does not declare
        num_classes = num_classes or timm_model.num_classes
        timm_model.reset_classifier(0)
        # timm >= 1.0: the pre-logits width (head_hidden_size) may differ from num_features
        num_features = timm_model.head_hidden_size if hasattr(model, "head_hidden_size") else timm_model.num_features
    else:
        zoo.drop_auxiliary(model)
        linear = zoo.remove_last_linear(model)
        num_classes, num_features = num_classes or linear.out_features, linear.in_features
        if type(model).__module__.startswith("transformers."):
            model = TransformersFeatures(model)
    return Classifier(model, ClassHead(num_features, cast(int, num_classes), **head_kwargs))


class TransformersFeatures(nn.Module):
    """A transformers image classifier whose classifier layer is an identity, as an encoder: images
    (`pixel_values`) in, the output's `logits` field (now the pooled features) out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out[0]


def build_model(model_cfg, seed: int, num_classes: int, in_channels: int, image_size: int) -> Classifier:
    """The Classifier a run's model config describes; the encoder is initialised from torch's seed,
    the class vectors from their own generator (model_cfg.head_seed, else `seed`)."""
    torch.manual_seed(seed)
    encoder = build_encoder(model_cfg.arch, in_channels, image_size, model_cfg.pool, model_cfg.pretrained)
    if model_cfg.num_features is not None:
        encoder = Projected(encoder, model_cfg.num_features)
    if model_cfg.neck == "bn":
        encoder = Neck(encoder)
    head_seed = seed if model_cfg.head_seed is None else model_cfg.head_seed
    head: nn.Module
    if model_cfg.vectors != "stored":
        head = ManyClassHead(width(encoder), num_classes, similarity=model_cfg.similarity, scale=model_cfg.scale,
                             init=model_cfg.init, seed=head_seed, vectors=model_cfg.vectors)
    else:
        head = ClassHead(
            width(encoder), num_classes, similarity=model_cfg.similarity, fixed=model_cfg.fixed,
            scale=model_cfg.scale, learn_scale=model_cfg.learn_scale, init=model_cfg.init, bias=model_cfg.bias,
            seed=head_seed,
        )
    return Classifier(encoder, head)


def bare_state_dict(classifier: Classifier | dict) -> tuple[dict, dict]:
    """A Classifier's (or its checkpoint's `model` state dict's) weights split for the bare model:
    (encoder weights with the bare model's key names, head weights without the `head.` prefix).

    For a timm/torchvision model the first loads straight into the library's model
    (`bare.load_state_dict(encoder_weights, strict=False)` leaves only its classifier missing); the
    second holds the class vectors (`weight`, also when fixed), `scale` and `bias` where present: a
    dot head without bias is the classifier `Linear` with `weight`, a cosine head is not a linear layer.
    """
    state = classifier.state_dict() if isinstance(classifier, nn.Module) else classifier
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    return encoder, head
