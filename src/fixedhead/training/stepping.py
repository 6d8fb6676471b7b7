"""What happens between a batch's loss and the next batch: backward, and every train.accumulate batches the
optimizer's step, with the tricks users bring from their own trainers, each from torch itself:

- gradient accumulation (train.accumulate): the loss of each batch is divided by the number of batches a
  step gathers, so that the step sees their mean; under DDP the batches before the step skip the gradient
  all-reduce (`no_sync`). The lr schedule advances per batch, so a step takes the lr of its last batch.
- float16 autocast with a gradient scaler (train.fp16; `torch.amp.GradScaler`): gradients are unscaled
  before clipping, and a step with non-finite gradients is skipped, as the scaler decides.
- gradient clipping (train.clip_grad: the global L2 norm, `torch.nn.utils.clip_grad_norm_`).
- an exponential moving average of the weights (train.ema: the decay; `torch.optim.swa_utils.AveragedModel`
  with `get_ema_multi_avg_fn`, buffers averaged too), updated after every optimizer step.
"""

from __future__ import annotations

import contextlib
import re
import warnings

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(model: torch.nn.Module, decay: float | None) -> AveragedModel | None:
    """The EMA of `model`'s weights and buffers that train.ema asks for, or None."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class Stepper:
    """Backward and optimizer steps for one run (see the module's docstring)."""

    def __init__(self, optimizer, scheduler, train_cfg, model: torch.nn.Module, on_step=None,
                 ema: AveragedModel | None = None, scaler=None):
        self.optimizer, self.scheduler, self.on_step, self.ema, self.model = optimizer, scheduler, on_step, ema, model
        self.accumulate, self.clip = train_cfg.accumulate, train_cfg.clip_grad
        self.scaler = scaler

    def steps_at(self, step: int, last: int) -> bool:
        """Whether batch `step` (0-based in its epoch, `last` the epoch's last) ends an optimizer step."""
        return (step + 1) % self.accumulate == 0 or step == last

    def no_sync(self, stepped, step: int, last: int):
        """DDP's gradient all-reduce only on the batch that ends a step."""
        if hasattr(stepped, "no_sync") and not self.steps_at(step, last):
            return stepped.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, step: int, last: int) -> None:
        """Backward of this batch's loss; the optimizer step if the batch ends one; the schedule's step."""
        scaled = loss / self.accumulate if self.accumulate > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if self.steps_at(step, last):
            self._step()
        if self.accumulate == 1 and self.scaler is None:
            self.scheduler.step()
            return
        # Batches gathered before the first step, or a step the scaler skipped: torch warns of a schedule
        # stepped before the optimizer. Here the schedule counts batches by design.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()

    def _step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.on_step is not None:
            self.on_step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
