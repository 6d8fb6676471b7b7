"""The optimizer of a run: parameter groups taken from the model, then SGD, AdamW, SGD with Muon for the
filters, or any of timm's optimizers by name (timm's factory, given our groups).

Groups are made by parameter identity, never by parameter names: the head's class vectors (learned ones
only: fixed vectors are buffers and never reach an optimizer), the head's other parameters (bias, scale),
batch-norm shifts, and what the model exempts from weight decay through timm's `no_weight_decay()` hook.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from ..errors import UserError, shown
from .muon import SGDMuon, is_filter

# train.optimizer: torch's SGD and AdamW; muon: SGD whose filter group takes Muon steps; timm:NAME: timm's
TIMM_PREFIX = "timm:"
OPTIMIZERS: dict[str, Any] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "muon": SGDMuon,
                              f"{TIMM_PREFIX}NAME": None}


def check_optimizer(name: str) -> None:
    """Refuse an optimizer name this installation cannot build, in one line."""
    if not name.startswith(TIMM_PREFIX):
        if name not in OPTIMIZERS or OPTIMIZERS[name] is None:
            raise UserError(f"unknown optimizer {shown(name)} (train.optimizer); choose one of: {', '.join(OPTIMIZERS)}")
        return
    try:
        from timm.optim import list_optimizers
    except ImportError:
        raise UserError(f"train.optimizer={shown(name)} needs timm: pip install 'fixedhead[timm]'") from None
    known = [str(n) for n in list_optimizers()]
    if name[len(TIMM_PREFIX):] not in known:
        close = difflib.get_close_matches(name[len(TIMM_PREFIX):], known, n=3)
        hint = f"did you mean {' or '.join(TIMM_PREFIX + c for c in close)}?" if close else "timm.optim.list_optimizers()"
        raise UserError(f"timm has no optimizer {shown(name[len(TIMM_PREFIX):])} (train.optimizer); {hint}")

NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)  # their shifts: train.bn_bias_lr


def sgd_hyperparameters(train_cfg) -> tuple[float, float]:
    """(lr, weight_decay) for torch SGD over the batch-mean loss.

    train.decoupled reads train.lr and train.weight_decay in the units of airbench (Jordan 2024; Page's
    "How to train your ResNet"): the step per 1,024 images, divided by 1 + 1 / (1 - momentum) (how much
    momentum lengthens steps), and a weight decay whose strength does not move with the lr. airbench sums
    the loss over the batch and hands SGD lr / k and decay lambda * B / k / (lr / k), k = 1024 (1 + 1 / (1 - m));
    over the batch mean the same steps are lr * B / k and lambda / lr.
    """
    if not train_cfg.decoupled:
        return train_cfg.lr, train_cfg.weight_decay
    kilostep = 1024 * (1 + 1 / (1 - train_cfg.momentum))
    return train_cfg.lr * train_cfg.batch_size / kilostep, train_cfg.weight_decay / train_cfg.lr


def parameter_groups(model: nn.Module, muon: bool = False, shifts_apart: bool = True) -> dict:
    """{group: [parameters]} of the parameters that require grad, by identity: class_vectors, head_other,
    no_weight_decay, bn_shifts (with `shifts_apart`), filters (the encoder's convolution filters, with `muon`)
    and encoder (the rest, in the model's order)."""
    head = getattr(model, "head", None)
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    vectors = getattr(head, "weight", None)
    by_name = dict(model.named_parameters())  # timm's hook answers with names: the one place names are read
    hooked: Any = model  # timm's no_weight_decay() hook, where the model has one
    named = hooked.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    exempt = {id(by_name[n]) for n in named if n in by_name}
    shifts = {id(m.bias) for m in model.modules() if shifts_apart and isinstance(m, NORM_LAYERS) and m.bias is not None}
    groups: dict[str, list] = {name: [] for name in ("encoder", "class_vectors", "head_other", "no_weight_decay",
                                                     "bn_shifts", "filters")}
    for param in model.parameters():
        if not param.requires_grad:
            continue
        key = id(param)
        if param is vectors:
            groups["class_vectors"].append(param)
        elif key in head_params:
            groups["head_other"].append(param)
        elif key in exempt:
            groups["no_weight_decay"].append(param)
        elif muon and is_filter(param):
            groups["filters"].append(param)
        elif key in shifts:
            groups["bn_shifts"].append(param)
        else:
            groups["encoder"].append(param)
    return groups


def make_optimizer(model: nn.Module, train_cfg) -> torch.optim.Optimizer:
    """train.optimizer over the parameters that require grad, in groups (parameter_groups).

    Learned class vectors get `head_weight_decay` (default: weight_decay); the head's bias and scale get
    none, and neither do parameters the model names in `no_weight_decay()` (a ViT's position embedding);
    every other encoder parameter gets weight_decay. Batch-norm shifts get train.bn_bias_lr times the lr
    and their decay divided by it, so that the decay per step stays. train.layer_decay scales each
    group's lr by timm's layer-wise rule (the model's group_matcher). With muon the encoder's filters take
    Muon steps, the rest SGD.
    """
    check_optimizer(train_cfg.optimizer)
    muon = train_cfg.optimizer == "muon"
    lr, decay = sgd_hyperparameters(train_cfg)
    head_decay = decay if train_cfg.head_weight_decay is None else (
        train_cfg.head_weight_decay / train_cfg.lr if train_cfg.decoupled else train_cfg.head_weight_decay)
    groups = parameter_groups(model, muon, shifts_apart=train_cfg.bn_bias_lr != 1.0)  # at 1.0: with the encoder
    scale = train_cfg.bn_bias_lr
    settings = {"encoder": (decay, 1.0), "class_vectors": (head_decay, 1.0), "head_other": (0.0, 1.0),
                "no_weight_decay": (0.0, 1.0), "bn_shifts": (decay / scale, scale)}  # (weight decay, lr multiplier)
    filters = groups.pop("filters")
    param_groups = [{"params": p, "weight_decay": settings[k][0], "lr": lr * settings[k][1], "name": k}
                    for k, p in groups.items() if p]
    if train_cfg.layer_decay is not None:
        param_groups = _layer_decayed(model, param_groups, train_cfg.layer_decay)
    if muon and not filters:
        raise UserError("train.optimizer muon trains convolution filters, and this model trains none; "
                        "accepted: sgd for it")
    if muon:
        param_groups.append({"params": filters, "lr": train_cfg.muon_lr, "momentum": train_cfg.muon_momentum,
                             "nesterov": train_cfg.nesterov, "weight_decay": 0.0, "muon": True, "name": "filters"})
    return _optimizer(train_cfg, param_groups, lr)


def _optimizer(train_cfg, param_groups: list[dict], lr: float) -> torch.optim.Optimizer:
    name = train_cfg.optimizer
    if name.startswith(TIMM_PREFIX):  # timm's factory takes our groups as they are (their decay, their lr)
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(param_groups, opt=name[len(TIMM_PREFIX):], lr=lr, momentum=train_cfg.momentum)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(train_cfg.momentum, train_cfg.beta2))
    return OPTIMIZERS[name](param_groups, lr=lr, momentum=train_cfg.momentum,
                            nesterov=train_cfg.nesterov and train_cfg.momentum > 0)


def _layer_decayed(model: nn.Module, param_groups: list[dict], layer_decay: float) -> list[dict]:
    """Each group split by timm's layer-wise lr scale (layer_decay ** (layers - layer), from the model's
    group_matcher); the scale is folded into the group's lr, since the schedules here scale the lr they
    are given and know nothing of timm's `lr_scale`. Parameters timm places in no layer keep the full lr."""
    if not hasattr(model, "group_matcher"):
        raise UserError("train.layer_decay needs a model that says which layer each parameter is in (timm's "
                        "group_matcher, as timm: models have); this one does not: leave train.layer_decay unset")
    try:
        from timm.optim import param_groups_layer_decay
    except ImportError:
        raise UserError("train.layer_decay uses timm's layer grouping: pip install 'fixedhead[timm]'") from None
    scale = {id(p): group["lr_scale"] for group in param_groups_layer_decay(model, 0.0, layer_decay=layer_decay)
             for p in group["params"]}
    split = []
    for group in param_groups:
        by_scale: dict = {}
        for param in group["params"]:
            by_scale.setdefault(scale.get(id(param), 1.0), []).append(param)
        split += [{**group, "params": params, "lr": group["lr"] * s, "name": f"{group['name']}@{s:.3g}"}
                  for s, params in sorted(by_scale.items())]
    return split
