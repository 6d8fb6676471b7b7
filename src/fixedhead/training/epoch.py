"""One epoch of SGD: the optimizer and its schedule, stop signals, and the training steps themselves.

train.py builds a run around these; nothing here knows about run folders or checkpoints.
"""

from __future__ import annotations

import itertools
import math
import signal
import threading
import time

import torch

from ..devices import autocast
from ..errors import UserError
from ..optim.muon import SGDMuon, is_filter
from . import distributed


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


def make_optimizer(model, train_cfg) -> torch.optim.Optimizer:
    """SGD over the parameters that require grad; fixed class vectors are buffers and never appear.

    Learned class vectors get `head_weight_decay` (default: weight_decay); the head's bias and
    scale get none; every encoder parameter gets weight_decay, except those the model names in
    `no_weight_decay()` (timm's hook: a ViT's position embedding and class token). Batch-norm shifts
    get train.bn_bias_lr times the lr and their decay divided by it, so that the decay per step stays.
    With train.optimizer muon, the encoder's convolution filters take Muon steps instead (muon.py).
    """
    lr, decay = sgd_hyperparameters(train_cfg)
    head_decay = decay if train_cfg.head_weight_decay is None else (
        train_cfg.head_weight_decay / train_cfg.lr if train_cfg.decoupled else train_cfg.head_weight_decay)
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    shifts = set() if train_cfg.bn_bias_lr == 1.0 else {  # at 1.0 the shifts stay in the encoder group
        id(m.bias) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.bias is not None}
    muon = train_cfg.optimizer == "muon"
    groups = {"encoder": [], "class_vectors": [], "head_other": [], "no_weight_decay": [], "bn_shifts": []}
    filters = []  # Muon's, with its own lr and momentum
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if muon and is_filter(param) and not name.startswith("head.") and name not in exempt:
            filters.append(param)
        elif name == "head.weight":
            groups["class_vectors"].append(param)
        elif name in exempt:
            groups["no_weight_decay"].append(param)
        elif id(param) in shifts:
            groups["bn_shifts"].append(param)
        else:
            groups["head_other" if name.startswith("head.") else "encoder"].append(param)
    scale = train_cfg.bn_bias_lr
    settings = {"encoder": (decay, 1.0), "class_vectors": (head_decay, 1.0), "head_other": (0.0, 1.0),
                "no_weight_decay": (0.0, 1.0), "bn_shifts": (decay / scale, scale)}  # (weight decay, lr multiplier)
    param_groups = [{"params": p, "weight_decay": settings[k][0], "lr": lr * settings[k][1], "name": k}
                    for k, p in groups.items() if p]
    if muon and not filters:
        raise UserError("train.optimizer muon trains convolution filters, and this model trains none; "
                        "accepted: sgd for it")
    if muon:
        param_groups.append({"params": filters, "lr": train_cfg.muon_lr, "momentum": train_cfg.muon_momentum,
                             "nesterov": train_cfg.nesterov, "weight_decay": 0.0, "muon": True, "name": "filters"})
    return (SGDMuon if muon else torch.optim.SGD)(param_groups, lr=lr, momentum=train_cfg.momentum,
                                                   nesterov=train_cfg.nesterov and train_cfg.momentum > 0)


def lr_factor(step: int, total: int, warmup: int, schedule: str, final: float = 0.0, start: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` of `total`: a linear warm-up from
    `start` (a fraction of the peak) over `warmup` steps, then linear and cosine decay to `final`."""
    if schedule == "plateau":
        return 1.0  # ReduceLROnPlateau acts per epoch on validation loss
    if step < warmup:
        return start + (1 - start) * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return final + (1 - final) * max(1.0 - progress, 0.0)
    if schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    return 1.0


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
    train.epochs); returns mean loss, accuracy and images/s.

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
            loss, predicted = model(images, labels, train_cfg.label_smoothing)
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
