"""A fixed head for very many classes: vectors kept in bf16 or regenerated from the seed, and logits
never formed whole.

ClassHead keeps float32 vectors and forms (B, C) logits. At C = 10^6, D = 512 that is 2 GiB of vectors
plus their gradient state, and 4 MB of logits per image. Fixed vectors need neither gradients nor
optimizer state, so ManyClassHead keeps them in bf16 (half the memory) or not at all: block k of
REGENERATION_ROWS rows is redrawn from (seed, k) whenever it is needed. Its loss and predictions visit
the classes in blocks (`block_size` rows at a time, float32), so memory is bounded by B x block_size.

The contract is ClassHead's: forward(features) gives logits (B, C) (blockwise, for small batches),
vectors(), identity(), scale, loss_and_predictions(). It adds `blockwise = True`, which tells
evaluation to keep per-image losses and predictions instead of (N, C) logits. Hand-written: no
maintained library offers a blockwise cross-entropy over class vectors that are generated on the fly;
tests check it against F.cross_entropy on the full logits.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .class_head import SIMILARITIES, class_vectors

VECTORS = ("stored", "bf16", "regenerate")  # model.vectors: stored is ClassHead's float32
REGENERATION_ROWS = 4096  # a regenerated head draws its vectors in blocks of this many classes
BLOCK_SIZE = 65536  # classes per block in loss and predictions


def regenerated_vectors(start: int, stop: int, num_features: int, seed: int, device="cpu") -> torch.Tensor:
    """Unit-norm rows start..stop-1 (float32) of a regenerated head's class vectors.

    Block k (classes k*REGENERATION_ROWS onwards) is a Gaussian draw from a CPU generator seeded by
    (seed, k) alone, so any rows are recomputed without the blocks before them, bit for bit on every
    device (drawn on the CPU, then moved)."""
    out = torch.empty(stop - start, num_features)
    first_block, last_block = start // REGENERATION_ROWS, (stop - 1) // REGENERATION_ROWS
    for block in range(first_block, last_block + 1):
        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + block)
        rows = torch.randn(REGENERATION_ROWS, num_features, generator=generator)
        lo, hi = max(start, block * REGENERATION_ROWS), min(stop, (block + 1) * REGENERATION_ROWS)
        piece = rows[lo - block * REGENERATION_ROWS:hi - block * REGENERATION_ROWS]
        out[lo - start:hi - start] = piece / piece.norm(dim=1, keepdim=True)
    return out.to(device)


class ManyClassHead(nn.Module):
    """Fixed class vectors for very many classes, stored in bf16 (`vectors="bf16"`) or regenerated
    block by block from the seed (`vectors="regenerate"`, init 'random' only). No bias, no learned S."""

    blockwise = True
    fixed = True
    bias = None
    log_scale = None
    if TYPE_CHECKING:  # for type checkers only: TorchScript cannot read this module's string annotations
        log_scale_fixed: torch.Tensor

    def __init__(self, num_features: int, num_classes: int, similarity: str = "dot", scale: float = 1.0,
                 init: str = "random", seed: int = 0, vectors: str = "bf16", block_size: int = BLOCK_SIZE):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise UserError(f"unknown similarity {similarity!r}; choose one of: {', '.join(SIMILARITIES)}")
        if vectors not in VECTORS[1:]:
            raise UserError(f"ManyClassHead keeps vectors as one of: {', '.join(VECTORS[1:])}; got {vectors!r}")
        if vectors == "regenerate" and init != "random":
            raise UserError("vectors 'regenerate' redraws Gaussian rows from the seed: it needs init 'random'")
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise UserError(f"scale must be a finite number > 0, got {scale!r}")
        self.num_features, self.num_classes = int(num_features), int(num_classes)
        self.similarity, self.init, self.seed, self.storage = similarity, init, int(seed), vectors
        self.block_size = int(block_size)
        if vectors == "bf16":
            self.register_buffer("weight", class_vectors(self.num_classes, self.num_features, init, seed).bfloat16())
        else:
            # Nothing of size C x D is stored. These are not the rows a stored head with the same seed
            # draws (both are uniform on the sphere).
            self.weight = None
        self.register_buffer("log_scale_fixed", torch.tensor(math.log(scale)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale_fixed.exp()

    def weight_blocks(self, device):
        """(start, float32 block of unit rows) over all classes, `block_size` rows at a time."""
        for start in range(0, self.num_classes, self.block_size):
            stop = min(start + self.block_size, self.num_classes)
            if self.weight is None:
                yield start, regenerated_vectors(start, stop, self.num_features, self.seed, device)
            else:
                yield start, self.weight[start:stop].to(device, torch.float32)

    def vectors(self) -> torch.Tensor:
        """All class vectors (C, D), float32 (C x D memory)."""
        return torch.cat([block for _, block in self.weight_blocks(self.log_scale_fixed.device)])

    def identity(self) -> torch.Tensor:
        """Equal on two heads exactly when their class vectors are (checked across ranks)."""
        return self.weight if self.weight is not None else torch.tensor([self.seed, self.num_classes, self.num_features])

    def _inputs(self, features: torch.Tensor) -> tuple[torch.Tensor, float]:
        features = features.float()
        if self.similarity == "cosine":
            features = F.normalize(features, dim=1)
        return features, self.scale.item()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """All logits (B, C): for a few images at a time; training and evaluation use the blockwise paths."""
        inputs, scale = self._inputs(features)
        return scale * torch.cat([inputs @ block.T for _, block in self.weight_blocks(features.device)], 1)

    def loss_and_predictions(self, features, labels, label_smoothing: float = 0.0):
        """Mean cross-entropy and arg-max classes without forming the (B, C) logits; exact: the same loss
        and feature gradient as F.cross_entropy(self(features), labels), up to float rounding."""
        if label_smoothing:
            raise UserError("label smoothing is not offered with model.vectors bf16/regenerate (blockwise loss)")
        inputs, scale = self._inputs(features)
        losses, predicted = _BlockwiseCrossEntropy.apply(inputs, labels, scale, self.weight_blocks)
        return losses.mean(), predicted

    @torch.no_grad()
    def losses_and_predictions(self, features, labels):
        """Per-image cross-entropy and arg-max classes (evaluation)."""
        inputs, scale = self._inputs(features)
        lse, target, predicted = _visit(inputs, labels, scale, self.weight_blocks)
        return lse - target, predicted

    def extra_repr(self) -> str:
        return (f"num_features={self.num_features}, num_classes={self.num_classes}, similarity={self.similarity}, "
                f"fixed=True, init={self.init}, seed={self.seed}, scale={self.scale.item():.4g}, vectors={self.storage}")


def _visit(features, labels, scale, blocks):
    """One pass over the class blocks: logsumexp, the label's logit and the arg-max class per image."""
    batch = len(features)
    lse = torch.full((batch,), float("-inf"), device=features.device)
    target = torch.zeros(batch, device=features.device)
    best = torch.full((batch,), float("-inf"), device=features.device)
    predicted = torch.zeros(batch, dtype=torch.int64, device=features.device)
    for start, block in blocks(features.device):
        logits = scale * features @ block.T  # (B, block)
        lse = torch.logaddexp(lse, logits.logsumexp(1))
        inside = (labels >= start) & (labels < start + logits.shape[1])
        target[inside] = logits[inside, labels[inside] - start]
        value, index = logits.max(1)
        better = value > best  # ties keep the earlier class, as argmax does
        best, predicted = torch.where(better, value, best), torch.where(better, index + start, predicted)
    return lse, target, predicted


class _BlockwiseCrossEntropy(torch.autograd.Function):
    """Per-image [logsumexp_c(s f_b . w_c) - s f_b . w_y] and arg-max classes, visiting (block, D) slices
    of the class vectors that `blocks(device)` yields as (start, float32 block); the backward pass
    visits them again."""

    @staticmethod
    def forward(ctx, features, labels, scale, blocks):
        lse, target, predicted = _visit(features, labels, scale, blocks)
        ctx.save_for_backward(features, labels, lse)
        ctx.scale, ctx.blocks = scale, blocks
        ctx.mark_non_differentiable(predicted)
        return lse - target, predicted

    @staticmethod
    def backward(ctx, grad_losses, _):
        features, labels, lse = ctx.saved_tensors
        grad = torch.zeros_like(features)
        rows = torch.arange(len(features), device=features.device)
        for start, block in ctx.blocks(features.device):
            probs = (ctx.scale * features @ block.T - lse[:, None]).exp_()  # softmax restricted to the block
            inside = (labels >= start) & (labels < start + len(block))
            probs[rows[inside], labels[inside] - start] -= 1
            grad += probs @ block
        return grad * (ctx.scale * grad_losses[:, None]), None, None, None
