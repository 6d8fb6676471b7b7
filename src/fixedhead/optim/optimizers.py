"""The optimizer of a run: parameter groups taken from the model, then SGD, or SGD with Muon for the filters.

Groups are made by parameter identity, never by parameter names: the head's class vectors (learned ones
only: fixed vectors are buffers and never reach an optimizer), the head's other parameters (bias, scale),
batch-norm shifts, and what the model exempts from weight decay through timm's `no_weight_decay()` hook.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .muon import SGDMuon, is_filter

# train.optimizer: what steps the encoder's convolution filters (every other parameter takes SGD steps)
OPTIMIZERS = {"sgd": torch.optim.SGD, "muon": SGDMuon}

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
    exempt = {id(by_name[n]) for n in (model.no_weight_decay() if hasattr(model, "no_weight_decay") else ())
              if n in by_name}
    shifts = {id(m.bias) for m in model.modules() if shifts_apart and isinstance(m, NORM_LAYERS) and m.bias is not None}
    groups = {name: [] for name in ("encoder", "class_vectors", "head_other", "no_weight_decay", "bn_shifts", "filters")}
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
    """SGD over the parameters that require grad, with train.optimizer's steps for the encoder's filters.

    Learned class vectors get `head_weight_decay` (default: weight_decay); the head's bias and scale get
    none, and neither do parameters the model names in `no_weight_decay()` (a ViT's position embedding);
    every other encoder parameter gets weight_decay. Batch-norm shifts get train.bn_bias_lr times the lr
    and their decay divided by it, so that the decay per step stays.
    """
    if train_cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {train_cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
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
    if muon and not filters:
        raise UserError("train.optimizer muon trains convolution filters, and this model trains none; "
                        "accepted: sgd for it")
    if muon:
        param_groups.append({"params": filters, "lr": train_cfg.muon_lr, "momentum": train_cfg.muon_momentum,
                             "nesterov": train_cfg.nesterov, "weight_decay": 0.0, "muon": True, "name": "filters"})
    return OPTIMIZERS[train_cfg.optimizer](param_groups, lr=lr, momentum=train_cfg.momentum,
                                           nesterov=train_cfg.nesterov and train_cfg.momentum > 0)
