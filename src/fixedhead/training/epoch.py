"""One epoch of training steps, and the stop signals that end it early.

fit.py builds a run around these; nothing here knows about run folders or checkpoints.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import autocast
from ..errors import UserError
from . import distributed

if TYPE_CHECKING:
    from ..models.classifier import Classifier


class LossOf(nn.Module):
    """What a training step calls: a Classifier's loss and predictions on a batch. DDP and torch.compile wrap
    this module, so that the loss (which a many-class head computes without forming logits) is inside their
    forward.

    `class_weight` (C,) weighs each class's cross-entropy (torch's `weight`: the mean is over the weights
    of the batch's labels); `mix` is torchvision's MixUp / CutMix (or a RandomChoice of them), which mixes
    images and turns labels into mixed one-hot targets; `loss` (train.loss) is ce, logit-adjusted (Menon et
    al. 2021: tau x log prior added to the logits in training only; `log_prior` (C,)) or dot-regression
    (Yang et al. 2022, for fixed class vectors: 1/2 (cos(f(x), w_y) - 1)^2). All but plain ce need the
    logits formed (not a blockwise many-class head); the predictions are the head's arg-max, compared with
    the batch's own labels.
    """

    class_weight: torch.Tensor | None  # buffers
    log_prior: torch.Tensor | None

    def __init__(self, model: Classifier, class_weight: torch.Tensor | None = None, mix=None, loss: str = "ce",
                 log_prior: torch.Tensor | None = None):
        super().__init__()
        self.model, self.mix, self.kind = model, mix, loss
        self.register_buffer("class_weight", class_weight)
        self.register_buffer("log_prior", log_prior)
        self.plain = class_weight is None and mix is None and loss == "ce"
        if not self.plain and getattr(model.head, "blockwise", False):
            raise UserError("train.class_weights, train.mixup, train.cutmix and train.loss other than ce need the "
                            "logits formed, which a blockwise many-class head (model.vectors bf16 or regenerate) "
                            "never does")

    def forward(self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
        if self.plain:
            return self.model.loss(images, labels, label_smoothing)
        targets = labels
        if self.mix is not None and self.training:
            images, targets = self.mix(images, labels)
        features = self.model.forward_features(images)
        logits = self.model.forward_head(features).float()
        if self.kind == "dot-regression":
            vectors = F.normalize(self.model.head.vectors().float(), dim=1)
            cosines = (F.normalize(features.float(), dim=1) * vectors[targets]).sum(1)
            return 0.5 * (cosines - 1).square().mean(), logits.argmax(1)
        adjusted = logits + self.log_prior if self.log_prior is not None and self.training else logits
        loss = F.cross_entropy(adjusted, targets, weight=self.class_weight, label_smoothing=label_smoothing)
        return loss, logits.argmax(1)


def class_weight(name: str, train_counts: list[int], device) -> torch.Tensor | None:
    """train.class_weights: none, or balanced (scikit-learn's rule: n / (C x n_c), so that every class's
    images weigh as much in all; a class without training images gets weight 0)."""
    if name == "none":
        return None
    counts = torch.tensor(train_counts, dtype=torch.float64)
    weight = torch.where(counts > 0, counts.sum() / (len(counts) * counts.clamp(min=1)), torch.zeros_like(counts))
    return weight.float().to(device)


def log_prior(loss: str, tau: float, train_counts: list[int], device) -> torch.Tensor | None:
    """tau x log(class prior) from the training images per class, for train.loss=logit-adjusted (else None);
    a class without training images gets the prior of one image, so the logit stays finite."""
    if loss != "logit-adjusted":
        return None
    counts = torch.tensor(train_counts, dtype=torch.float64).clamp(min=1)
    return (tau * (counts / counts.sum()).log()).float().to(device)


def make_mix(mixup: float, cutmix: float, num_classes: int):
    """torchvision's MixUp (alpha = train.mixup) and CutMix (alpha = train.cutmix), one of them chosen at
    random per batch when both are on; None when both are 0."""
    from torchvision.transforms import v2

    chosen = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []) + (
        [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else [])
    return None if not chosen else chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


class StopSignals:
    """While active, SIGINT/SIGTERM ask training to stop after the current step (a second one stops at once)."""

    def __enter__(self):
        self.received, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Interrupted(Exception):
    """Training stopped on request after writing a checkpoint; the message says how to resume."""


def train_epoch(model, loader, stepper, train_cfg, seed: int, epoch: int, progress, partial: dict | None = None,
                stop: StopSignals | None = None, ctx=distributed.SINGLE, limit: int | None = None) -> dict:
    """One pass over the training loader, or its first `limit` steps (the last epoch of a fractional
    train.epochs); returns mean loss, accuracy and images/s. `model` computes (loss, predictions) from
    (images, labels, label_smoothing): a LossOf, or what DDP and torch.compile made of one.

    `partial` (from an interrupted epoch) skips the steps already taken and restores the running sums;
    the skipped batches are still drawn, so the data order and augmentation stay those of the epoch.
    If `stop` receives a signal, the epoch ends after the current optimizer step with record["partial"] set.
    `stepper` (stepping.Stepper) does the backward and the optimizer's steps.
    """
    model.train()
    device = loader.labels.device
    partial = partial or {"step": 0, "per_rank": [[0.0, 0, 0, 0.0, 0]] * ctx.world, "elapsed": 0.0}
    sums, start = _Sums(_partial_sums(partial["per_rank"], ctx), device), time.perf_counter() - partial["elapsed"]
    last = (len(loader) if limit is None else min(limit, len(loader))) - 1
    end_from = last + 1 - max(1, (last + 1) // 4)  # the epoch's last quarter: the end loss
    progress.update(partial["step"])
    for step, (images, labels) in enumerate(itertools.islice(loader.epoch(seed, epoch, ctx.rank, ctx.world), last + 1)):
        if step < partial["step"]:
            continue
        with stepper.no_sync(model, step, last):
            with autocast(device, train_cfg.bf16, train_cfg.fp16):
                loss, predicted = model(images, labels, train_cfg.label_smoothing)  # a LossOf, maybe wrapped
            stepper.backward(loss, step, last)
        sums.add(loss.detach(), predicted == labels, step >= end_from)
        if step % 10 == 0 or step == last:
            rate = sums.seen / (time.perf_counter() - start)
            progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{sums.correct.item() / sums.seen:.3f}",
                                 img_s=f"{rate:.0f}")
        progress.update(1)
        if stepper.steps_at(step, last) and _should_stop(stop, ctx, device) and step < last:
            # Each rank's own running sums, so that a resumed epoch adds them up in the same order.
            per_rank = distributed.gather_across(sums.values(), device)
            return {"partial": {"step": step + 1, "per_rank": per_rank, "elapsed": time.perf_counter() - start}}
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen, end_sum, end_seen = distributed.sum_across(sums.values(), device)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "train_loss_end": end_sum / end_seen if end_seen else None,
            "images_per_s": seen / elapsed, "epoch_time_s": elapsed}


class _Sums:
    """One rank's running sums over an epoch: loss, correct predictions and images over all its steps, and
    loss and images over its last quarter (the end loss by which `runs.outcome` tells a run that ended at
    chance). The losses stay tensors on the device, so that a step does not wait for the device."""

    def __init__(self, saved: list, device):
        self.loss, self.end_loss = (torch.tensor(float(saved[i]), dtype=torch.float32, device=device) for i in (0, 3))
        self.correct = torch.tensor(int(saved[1]), dtype=torch.int64, device=device)
        self.seen, self.end_seen = int(saved[2]), int(saved[4])

    def add(self, loss, hits, at_end: bool) -> None:
        self.loss += loss * len(hits)
        self.correct += hits.sum()
        self.seen += len(hits)
        if at_end:
            self.end_loss += loss * len(hits)
            self.end_seen += len(hits)

    def values(self) -> list:
        return [self.loss.item(), self.correct.item(), self.seen, self.end_loss.item(), self.end_seen]


def _partial_sums(per_rank: list, ctx) -> list:
    """This rank's running sums of an interrupted epoch; if the number of processes changed, rank 0
    carries the totals (the epoch's figures stay right; only the summation order differs). A checkpoint
    of a version that kept no end sums resumes with them at zero: the end loss then covers the steps
    after the resumption."""
    per_rank = [list(r) + [0.0, 0][len(r) - 3:] for r in per_rank]
    if len(per_rank) == ctx.world:
        return per_rank[ctx.rank]
    return [sum(r[i] for r in per_rank) for i in range(5)] if ctx.is_main else [0.0, 0, 0, 0.0, 0]


def _should_stop(stop, ctx, device) -> bool:
    """Whether a stop signal arrived; across ranks, so that every rank stops after the same step."""
    local = 1.0 if stop is not None and stop.received else 0.0
    return (distributed.sum_across([local], device)[0] if ctx.world > 1 else local) > 0
