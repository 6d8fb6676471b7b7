"""The head's numbers inside a Lightning trainer (the extra `lightning`): `HeadNumbers()` in
`Trainer(callbacks=[...])` logs, each epoch, the class vectors' mean and largest pairwise cosine and the
logit scale S (after each training epoch), and the features' compactness, the mean cos(f(x), w_pred) over
the validation batches: the numbers fixedhead's own trainer logs (trackers.head_numbers) and the paper's
Table 4 measure. The head is the module's classification layer (analysis.classifier_head: a fixedhead
head, timm's get_classifier(), or the last nn.Linear) unless one is given.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from .. import metrics
from .analysis import classifier_head


class HeadNumbers(pl.Callback):
    """Logs head/cos_mean, head/cos_max, head/scale (training epochs) and head/compactness (validation)."""

    def __init__(self, head: torch.nn.Module | None = None):
        self.head, self._sum, self._count = head, 0.0, 0
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def _find(self, pl_module) -> Any:
        return self.head if self.head is not None else classifier_head(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        head = self._find(pl_module)
        vectors = head.vectors() if hasattr(head, "vectors") else head.weight.detach().float()
        off = metrics.off_diagonal(metrics.cosine_matrix(vectors))
        scale = getattr(head, "scale", None)
        numbers = {"head/cos_mean": off.mean().item(), "head/cos_max": off.max().item()}
        numbers |= {"head/scale": float(scale.detach())} if isinstance(scale, torch.Tensor) else {}
        pl_module.log_dict(numbers)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        head = self._find(pl_module)
        self._sum, self._count = 0.0, 0

        def measure(module, args, logits):
            features = args[0].detach().float()
            vectors = module.vectors() if hasattr(module, "vectors") else module.weight.detach().float()
            chosen = vectors[logits.argmax(1)]
            self._sum += F.cosine_similarity(features, chosen, dim=1).sum().item()
            self._count += len(features)

        self._hook = head.register_forward_hook(measure)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._count:
            pl_module.log("head/compactness", self._sum / self._count)
