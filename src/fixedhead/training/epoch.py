"""One epoch of training steps, and the stop signals that end it early.

fit.py builds a run around these; nothing here knows about run folders or checkpoints.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time

import torch
from torch import nn

from ..devices import autocast
from . import distributed


class LossOf(nn.Module):
    """What a training step calls: a Classifier's loss and predictions on a batch. DDP and torch.compile wrap
    this module, so that the loss (which a many-class head computes without forming logits) is inside their
    forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
        return self.model.loss(images, labels, label_smoothing)


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


def train_epoch(model, loader, optimizer, scheduler, train_cfg, seed: int, epoch: int, progress,
                partial: dict | None = None, stop: StopSignals | None = None, ctx=distributed.SINGLE,
                on_step=None, limit: int | None = None) -> dict:
    """One pass over the training loader, or its first `limit` steps (the last epoch of a fractional
    train.epochs); returns mean loss, accuracy and images/s. `model` computes (loss, predictions) from
    (images, labels, label_smoothing): a LossOf, or what DDP and torch.compile made of one.

    `partial` (from an interrupted epoch) skips the steps already taken and restores the running sums;
    the skipped batches are still drawn, so the data order and augmentation stay those of the epoch.
    If `stop` receives a signal, the epoch ends after the current step with record["partial"] set.
    `on_step` is called after every optimizer step (lookahead).
    """
    model.train()
    device = loader.labels.device
    partial = partial or {"step": 0, "per_rank": [[0.0, 0, 0]] * ctx.world, "elapsed": 0.0}
    mine = _partial_sums(partial["per_rank"], ctx)
    loss_sum = torch.tensor(mine[0], dtype=torch.float32, device=device)
    correct = torch.tensor(int(mine[1]), dtype=torch.int64, device=device)
    seen, start = int(mine[2]), time.perf_counter() - partial["elapsed"]
    last = (len(loader) if limit is None else min(limit, len(loader))) - 1
    progress.update(partial["step"])
    for step, (images, labels) in enumerate(itertools.islice(loader.epoch(seed, epoch, ctx.rank, ctx.world), last + 1)):
        if step < partial["step"]:
            continue
        with autocast(device, train_cfg.bf16):
            loss, predicted = model(images, labels, train_cfg.label_smoothing)  # a LossOf, maybe wrapped
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step()
        loss_sum += loss.detach() * len(labels)
        correct += (predicted == labels).sum()
        seen += len(labels)
        if step % 10 == 0 or step == last:
            rate = seen / (time.perf_counter() - start)
            progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:.0f}")
        progress.update(1)
        if _should_stop(stop, ctx, device) and step < last:
            # Each rank's own running sums, so that a resumed epoch adds them up in the same order.
            sums = distributed.gather_across([loss_sum.item(), correct.item(), seen], device)
            return {"partial": {"step": step + 1, "per_rank": sums, "elapsed": time.perf_counter() - start}}
    elapsed = time.perf_counter() - start
    total_loss, total_correct, seen = distributed.sum_across([loss_sum.item(), correct.item(), seen], device)
    return {"train_loss": total_loss / max(seen, 1), "train_acc": total_correct / max(seen, 1),
            "images_per_s": seen / elapsed, "epoch_time_s": elapsed}


def _partial_sums(per_rank: list, ctx) -> list:
    """This rank's running sums of an interrupted epoch; if the number of processes changed, rank 0
    carries the totals (the epoch's figures stay right; only the summation order differs)."""
    if len(per_rank) == ctx.world:
        return per_rank[ctx.rank]
    return [sum(r[i] for r in per_rank) for i in range(3)] if ctx.is_main else [0.0, 0, 0]


def _should_stop(stop, ctx, device) -> bool:
    """Whether a stop signal arrived; across ranks, so that every rank stops after the same step."""
    local = 1.0 if stop is not None and stop.received else 0.0
    return (distributed.sum_across([local], device)[0] if ctx.world > 1 else local) > 0
