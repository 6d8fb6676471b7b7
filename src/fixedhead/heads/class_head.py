"""Class vectors and the classification head: logits are computed here and nowhere else.

A head holds `weight` (C, D), one row per class, and a logit scale S (1 unless set; fixed or learned).
Dot product: logits = S * features @ weight.T (+ bias). Cosine: logits = S * normalize(features) @
normalize(weight).T (+ bias). (airbench's learned linear head is a dot head with S = 1/9.) Fixed heads keep `weight` as a
buffer (in `state_dict`, never in `parameters()`); learned heads keep it as a Parameter.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

SIMILARITIES = ("dot", "cosine")


def _gaussian(num_classes: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    # Gaussian rows, normalised below: uniform on the unit sphere. float32 keeps C = 10^6 affordable.
    return torch.randn(num_classes, num_features, generator=generator)


def _uniform_int(num_classes: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    # The authors' draw: integers uniform in [-100, 99]; a zero row is redrawn (never seen in practice).
    while True:
        weight = torch.randint(-100, 100, (num_classes, num_features), generator=generator)
        if bool((weight != 0).any(dim=1).all()):
            return weight.float()


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows, cols) matrix with orthonormal columns; needs rows >= cols."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # sign fix makes the draw uniform


def _orthogonal(num_classes: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    # C <= D: orthonormal rows. C > D: rows cannot all be orthogonal; orthonormal columns instead
    # (the rows form a tight frame), as torch.nn.init.orthogonal_ does.
    if num_classes <= num_features:
        return _orthonormal_columns(num_features, num_classes, generator).T
    return _orthonormal_columns(num_classes, num_features, generator)


def _sylvester(order: int) -> torch.Tensor:
    hadamard = torch.ones(1, 1, dtype=torch.float64)
    while hadamard.shape[0] < order:
        hadamard = torch.cat([torch.cat([hadamard, hadamard], 1), torch.cat([hadamard, -hadamard], 1)], 0)
    return hadamard


def _hadamard(num_classes: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    # Rows of a Sylvester Hadamard matrix of the largest power-of-two order n <= D, zero-padded to D
    # columns, so rows stay exactly orthogonal. The seed picks which C of the n rows.
    order = 1 << (num_features.bit_length() - 1)
    if num_classes > order:
        raise UserError(
            f"init 'hadamard' needs num_classes <= {order} (the largest power of two <= num_features="
            f"{num_features}), got num_classes={num_classes}; use 'orthogonal', 'simplex' or 'random'"
        )
    rows = torch.randperm(order, generator=generator)[:num_classes]
    weight = torch.zeros(num_classes, num_features, dtype=torch.float64)
    weight[:, :order] = _sylvester(order)[rows]
    return weight


def _simplex(num_classes: int, num_features: int, generator: torch.Generator) -> torch.Tensor:
    # Simplex equiangular tight frame: a random rotation of the centred identity, cos = -1/(C-1).
    if num_classes < 2 or num_features < num_classes:
        raise UserError(
            f"init 'simplex' needs 2 <= num_classes <= num_features, got num_classes={num_classes}, "
            f"num_features={num_features}; use 'orthogonal' or 'random'"
        )
    basis = _orthonormal_columns(num_features, num_classes, generator)  # (D, C)
    centred = torch.eye(num_classes, dtype=torch.float64) - 1.0 / num_classes
    return (basis @ centred).T  # (C, D)


INITS = {
    "random": _gaussian,
    "uniform-int": _uniform_int,
    "orthogonal": _orthogonal,
    "hadamard": _hadamard,
    "simplex": _simplex,
}


def class_vectors(num_classes: int, num_features: int, init: str = "random", seed: int = 0) -> torch.Tensor:
    """Draw (num_classes, num_features) unit-norm class vectors from their own generator seeded by `seed`."""
    if init not in INITS:
        raise UserError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if num_classes < 1 or num_features < 1:
        raise UserError(f"num_classes and num_features must be >= 1, got {num_classes} and {num_features}")
    generator = torch.Generator().manual_seed(int(seed))
    weight = INITS[init](num_classes, num_features, generator)
    return weight.div_(weight.norm(dim=1, keepdim=True)).float()  # in place: one (C, D) copy at most


class ClassHead(nn.Module):
    """Maps features (B, D) to logits (B, C) by dot product or scaled cosine with class vectors.

    Learned and fixed heads start from the same vectors for the same `seed`, so a fixed-vs-learned
    comparison differs only in whether the vectors move.
    """

    if TYPE_CHECKING:  # for type checkers only: TorchScript cannot read this module's string annotations
        log_scale_fixed: torch.Tensor  # a buffer where S is not learned

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        similarity: str = "dot",
        fixed: bool = False,
        scale: float = 1.0,
        learn_scale: bool = False,
        init: str = "random",
        bias: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise UserError(f"unknown similarity {similarity!r}; choose one of: {', '.join(SIMILARITIES)}")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise UserError(f"scale must be a finite number > 0, got {scale!r}")
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.similarity, self.fixed, self.init, self.seed = similarity, bool(fixed), init, int(seed)
        weight = class_vectors(self.num_classes, self.num_features, init, seed)
        if self.fixed:
            self.register_buffer("weight", weight)
        else:
            self.weight = nn.Parameter(weight)
        # S = exp(log_scale) keeps a learned scale positive.
        log_scale = torch.tensor(math.log(scale))
        self.log_scale = nn.Parameter(log_scale) if learn_scale else None
        if not learn_scale:
            self.register_buffer("log_scale_fixed", log_scale)
        self.bias = nn.Parameter(torch.zeros(self.num_classes)) if bias else None

    @property
    def scale(self) -> torch.Tensor:
        return (self.log_scale if self.log_scale is not None else self.log_scale_fixed).exp()

    def unit_weight(self) -> torch.Tensor:
        """The class vectors with unit-norm rows (C, D), as the cosine head sees them."""
        return self.weight if self.fixed else F.normalize(self.weight, dim=1)

    def vectors(self) -> torch.Tensor:
        """All class vectors (C, D), float32, detached."""
        return self.weight.detach().float()

    def identity(self) -> torch.Tensor:
        """A tensor that is equal on two heads exactly when their class vectors are (checked across ranks)."""
        return self.weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.similarity == "dot":
            logits = F.linear(features, self.weight)  # (B, D) @ (D, C) -> (B, C)
        else:  # fixed rows are already unit-norm, so the (C, D) normalisation is skipped for them
            logits = F.linear(F.normalize(features, dim=1), self.unit_weight())  # (B, C), in [-1, 1]
        logits = logits * self.scale.to(logits.dtype)
        return logits if self.bias is None else logits + self.bias

    def loss_and_predictions(self, features: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
        """Mean cross-entropy (float32) and arg-max classes: what a training step needs."""
        logits = self(features)
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing), logits.argmax(1)

    def settings(self) -> dict:
        """The keyword arguments that build a head like this one (its vectors drawn anew)."""
        return {"similarity": self.similarity, "fixed": self.fixed, "scale": float(self.scale.item()),
                "learn_scale": self.log_scale is not None, "init": self.init, "bias": self.bias is not None,
                "seed": self.seed}

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_classes={self.num_classes}, similarity={self.similarity}, "
            f"fixed={self.fixed}, init={self.init}, seed={self.seed}, scale={self.scale.item():.4g}, "
            f"bias={self.bias is not None}"
        )
