"""fit(config, run_dir) -> final metrics: open the run folder, build, loop over epochs, finish."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from .. import config as config_mod
from .. import data as data_mod
from ..data import made
from ..data.loaders import prepare
from ..devices import EMULATED_BF16, emulated_bf16, keep_freed_memory, resolve_device, use_bf16
from ..errors import UserError, reason, shown
from ..evaluation.predict import predict, scores
from ..files import check_fields
from ..metrics import long_tail_accuracies
from ..models import zoo
from ..models.classifier import build_model
from ..models.whitening import MAX_IMAGES, first_conv, whiten_first_conv
from ..optim import PLATEAU_MODES, lr_factor, make_optimizer
from ..optim.lookahead import Lookahead
from ..runs import RunDir, describe_environment, outcome
from ..trackers import check_tracker_folder, head_numbers, open_tracker
from . import distributed
from .epoch import Interrupted, LossOf, StopSignals, class_weight, log_prior, make_mix, train_epoch
from .stepping import Stepper, make_ema


def _open_run(run: RunDir, config, resume: bool, overwrite: bool):
    """Decide between a fresh start and a resume; refuse to clobber a run unless told to, and refuse to
    resume a run with a config that contradicts the one it was started with. Changes nothing on disk."""
    run.check_ours()
    if overwrite:
        return config, None
    if run.is_finished():
        raise UserError(f"{run.path} already holds a run trained to its end (finished, diverged or at chance); "
                        "choose another --out or pass --overwrite")
    elif run.has_checkpoint() and not resume:
        raise UserError(f"{run.path} holds an unfinished run; pass --resume to continue it or --overwrite to restart")
    if not (resume and run.has_checkpoint()):
        return config, None
    saved = config_mod.saved_config(run.read_config(), run.config_path, run.version())
    changed = [key for key in config_mod.differences(saved, config) if key not in config_mod.PLACE_KEYS]
    if changed:
        old, new = config_mod.flat(saved)[changed[0]], config_mod.flat(config)[changed[0]]
        raise UserError(f"--resume would train {run.path} with {changed[0]}={shown(new)}, but it was started with "
                        f"{shown(old)} ({len(changed)} key(s) differ); resume without changing them, or --overwrite")
    return config, _checkpoint(run, config)


def _checkpoint(run: RunDir, config) -> dict:
    checkpoint = run.load_checkpoint()
    fields = {"model": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "train_time_s": float,
              "torch_rng": torch.Tensor}
    check_fields(checkpoint, fields, run.checkpoint_path)
    if checkpoint.get("partial") is not None and "per_rank" not in checkpoint["partial"]:
        raise UserError(f"{run.checkpoint_path} was interrupted mid-epoch by an older fixedhead whose partial epochs "
                        "this one cannot continue; restart with --overwrite")
    bad = next((key for key, ok in _STATE_RULES.items() if not _holds(ok, checkpoint.get(key))), None)
    if bad is not None:
        raise UserError(f"{run.checkpoint_path}: {bad} is {shown(checkpoint.get(bad))}, not what fixedhead writes there; "
                        "the file is damaged: restart with --overwrite")
    return checkpoint


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _holds(test, value) -> bool:
    try:
        return bool(test(value))
    except (TypeError, KeyError, ValueError, AttributeError):
        return False


# What the small fields of a checkpoint hold (the tensors are checked by loading them into the model).
_STATE_RULES = {
    "train_time_s": lambda v: _number(v) and math.isfinite(v) and v >= 0,
    "losses": lambda v: v is None or (isinstance(v, (list, tuple)) and 1 <= len(v) <= 2 and all(map(_number, v))),
    "end_loss": lambda v: v is None or _number(v),
    "best": lambda v: v is None or (isinstance(v["epoch"], int) and _number(v["val_acc"]) and isinstance(v["model"], dict)),
    "partial": lambda v: v is None or (
        isinstance(v["step"], int) and v["step"] >= 0 and _number(v["elapsed"]) and _number(v["lr"])
        and isinstance(v["per_rank"], list) and v["per_rank"]
        and all(len(r) in (3, 5) and all(map(_number, r)) for r in v["per_rank"])),  # floats after a gather
    "lookahead": lambda v: v is None or isinstance(v, dict),
    "ema": lambda v: v is None or isinstance(v, dict),
    "scaler": lambda v: v is None or isinstance(v, dict),
    "plateau": lambda v: v is None or isinstance(v, dict),
}


def _check_same_data(checkpoint: dict, data: dict) -> None:
    """A resumed run trains on the data it started on: the same class names, channels and image size."""
    saved, now = checkpoint.get("data") or {}, _data_meta(data)
    for key in ("classes", "in_channels", "image_size"):
        if saved.get(key) != now[key]:
            raise UserError(f"--resume would go on with other data than the run started on ({key}: "
                            f"{shown(saved.get(key), 80)} then, {shown(now[key], 80)} now); resume on the same "
                            "dataset, or start again with --overwrite")


def _data_meta(data: dict) -> dict:
    """What evaluation needs to rebuild the model and its input normalisation."""
    return {k: data[k] for k in ("classes", "in_channels", "image_size", "mean", "std")}


@dataclass
class Training:
    """What one run trains with, and where it stands: `epoch` epochs done (plus `partial` steps of the
    next after an interruption), the best weights so far (train.select=best_val) and the time spent."""

    config: config_mod.Config
    data: dict  # loaders train / val / test and the data meta (see data.loaders.prepare)
    model: torch.nn.Module
    stepped: torch.nn.Module  # what the training steps call: the model, wrapped by DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plateau: object = None  # ReduceLROnPlateau for schedule=plateau
    lookahead: Lookahead | None = None
    ema: AveragedModel | None = None  # train.ema: the weights' moving average (stepping.make_ema)
    scaler: torch.amp.GradScaler | None = None  # train.fp16
    epoch: int = 0
    best: dict | None = None
    train_time_s: float = 0.0
    partial: dict | None = None
    losses: tuple | None = None  # (first epoch's, last epoch's) mean training loss: runs.outcome
    end_loss: float | None = None  # mean training loss over the last epoch's last quarter: runs.outcome
    steps: int = 0  # optimizer steps to train: train.epochs' worth, or what train.images_seen buys (planned_steps)

    @property
    def epochs(self) -> int:
        """Epochs begun: the last one ends early when `steps` is not a whole number of epochs."""
        return math.ceil(self.steps / max(1, len(self.data["train"])))

    def state(self, partial: dict | None = None) -> dict:
        """Everything needed to continue exactly (the checkpoint)."""
        return {
            "partial": partial, "config": config_mod.to_dict(self.config), "data": _data_meta(self.data),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **{name: part.state_dict() if part is not None else None for name, part in self._optional().items()},
            "epoch": self.epoch, "best": self.best, "train_time_s": self.train_time_s,
            "losses": self.losses, "end_loss": self.end_loss, "torch_rng": torch.get_rng_state(),
        }

    def restore(self, checkpoint: dict) -> None:
        try:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            for name, part in self._optional().items():
                if part is not None:
                    part.load_state_dict(checkpoint[name])
            torch.set_rng_state(checkpoint["torch_rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as error:
            raise UserError(f"the checkpoint does not fit this run's model and optimizer ({reason(error)}); "
                            "restart with --overwrite") from None
        if not 0 <= checkpoint["epoch"] <= self.epochs:
            raise UserError(f"the checkpoint says {checkpoint['epoch']} epochs were done, outside 0..{self.epochs}")
        self.epoch, self.best, self.train_time_s = checkpoint["epoch"], checkpoint["best"], checkpoint["train_time_s"]
        self.partial, self.losses = checkpoint.get("partial"), checkpoint.get("losses")
        self.end_loss = checkpoint.get("end_loss")

    def _optional(self) -> dict:
        return {"plateau": self.plateau, "lookahead": self.lookahead, "ema": self.ema, "scaler": self.scaler}

    def evaluated(self) -> torch.nn.Module:
        """The weights that validation scores and that become the run's: the moving average with train.ema."""
        return cast(torch.nn.Module, self.ema.module) if self.ema is not None else self.model


def _evaluate(model, loader, tc, prefix: str, train_counts: list[int] | None = None) -> dict:
    """Scores of the model on a split; with `train_counts` (the training images per class), also the
    balanced accuracy, and where the counts differ the many / medium / few-shot accuracies."""
    predictions = predict(model, loader, tc.bf16, tta=tc.tta)
    out = {k: v for k, v in scores(predictions).items() if k != "count"}
    if train_counts is not None and "logits" in predictions:
        tail = long_tail_accuracies(predictions["logits"].argmax(1), predictions["labels"], train_counts)
        out.update(tail if len(set(train_counts)) > 1 else {"balanced_acc": tail["balanced_acc"]})
    return {f"{prefix}_{k}": v for k, v in out.items()}


def fit(config, run_dir, resume: bool = False, overwrite: bool = False, verbose: bool = True,
        callbacks: tuple | list = (), train_data=None, test_data=None) -> dict:
    """Train the run `config` describes into `run_dir`; returns the final metrics (also final.json).

    The test split is evaluated once, at the end, on the weights chosen by `train.select`.
    `callbacks` are called with each epoch's record, plus the tracker train.log names (trackers.py).
    `train_data` and `test_data` (torch Datasets of (image, label), e.g. torchvision's; both or neither)
    replace the dataset the config names; the run records data.name python (data.from_dataset).
    """
    given = _given(train_data, test_data)
    if given:
        config = config_mod.make_config(config_mod.to_dict(config), {"data.name": data_mod.PYTHON})
    ctx, device = distributed.setup(resolve_device(config.train.device))
    config, note = pretrained_input_size(config)
    run = RunDir(run_dir, writable=ctx.is_main)
    with run.lock():
        config, checkpoint = _open_run(run, config, resume, overwrite)
        training = _build(config, ctx, device, fresh=checkpoint is None, given=given)
        if note and verbose and ctx.is_main:  # once the model is there (a pretrained one may be refused offline)
            print(note, file=sys.stderr)
        check_tracker_folder(config.train.log, run)
        _start(run, training, checkpoint, overwrite, device)
        called = list(callbacks) if ctx.is_main else []  # under torchrun only rank 0 prints and reports
        tracker = open_tracker(config.train.log, run, config_mod.flat(config)) if ctx.is_main else None
        called += [tracker] if tracker else []
        final = None
        try:
            _loop(run, training, ctx, verbose=verbose and ctx.is_main, callbacks=called)
            final = _finish(run, training)
            return final
        finally:
            for callback in called:
                if hasattr(callback, "close"):
                    callback.close(final)


def _given(train_data, test_data) -> dict | None:
    if (train_data is None) != (test_data is None):
        raise UserError("fit(train_data=..., test_data=...) takes both datasets or neither")
    if train_data is None:
        return None
    train = data_mod.from_dataset(train_data, what="train_data")
    return {"train": train, "test": data_mod.from_dataset(test_data, train.classes, what="test_data")}


def _build(config, ctx, device, fresh: bool, given: dict | None = None) -> Training:
    """Data, model, optimizer and schedules; a `fresh` run loads model.weights and computes patch-whitening
    filters (on resume the checkpoint holds them)."""
    tc = config.train
    if tc.batch_size % ctx.world:
        raise UserError(f"train.batch_size {tc.batch_size} must be a multiple of the {ctx.world} processes")
    if device.type == "cpu":
        keep_freed_memory()  # about 8% of a CPU epoch: see its docstring
    torch.backends.cudnn.benchmark = not tc.deterministic
    torch.backends.cudnn.deterministic = tc.deterministic
    data = prepare(config.data, seed=config.seed, batch_size=tc.batch_size, eval_batch_size=tc.eval_batch_size,
                   device=device, channels_last=tc.channels_last, with_val=config_mod.needs_validation(config),
                   given=given)
    model = build_model(config.model, config.seed, len(data["classes"]), data["in_channels"], data["image_size"])
    if config.model.weights is not None and fresh:
        zoo.load_encoder_weights(model.encoder, config.model.weights)
    if config.model.pretrained:
        _normalise_as_pretrained(data, model.encoder)
    if config.model.whiten != "none" and fresh:
        whiten_first_conv(model.encoder, data["train"].sample(MAX_IMAGES))
    if config.model.whiten == "frozen":
        first_conv(model.encoder).weight.requires_grad_(False)
    _check_whiten_bias(config, model, ctx)
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, tc)
    steps = planned_steps(tc, data["train"])
    warmup = round(tc.warmup_epochs * len(data["train"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup, tc.schedule, tc.final_lr, tc.warmup_start))
    plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=PLATEAU_MODES[tc.plateau_on],
                                                          factor=0.2, patience=3)
               if tc.schedule == "plateau" else None)
    counts = data["train_counts"]
    loss = LossOf(model, class_weight(tc.class_weights, counts, device), make_mix(tc.mixup, tc.cutmix, len(counts)),
                  tc.loss, log_prior(tc.loss, tc.logit_tau, counts, device))
    return Training(config, data, model, _wrap(loss, tc, ctx, device), optimizer, scheduler, plateau,
                    Lookahead(model, tc.lookahead, steps) if tc.lookahead else None, make_ema(model, tc.ema),
                    torch.amp.GradScaler(device.type) if tc.fp16 else None, steps=steps)


def pretrained_input_size(config) -> tuple[config_mod.Config, str | None]:
    """With model.pretrained and no data.image_size, the images are resized to the side the model was
    pretrained at (its data config); the run's config records that side, so that scoring, predict and
    export resize the same way. A data.image_size given is kept. Returns the config and a note to print."""
    if not config.model.pretrained or config.data.image_size is not None:
        return config, None
    side = zoo.pretrained_input_size(config.model.arch)
    if side is None:
        return config, None
    note = (f"note: {config.model.arch} was pretrained on {side} px images: the images are resized to that "
            f"(data.image_size={side}; set data.image_size to choose another side)")
    return config_mod.make_config(config_mod.to_dict(config), {"data.image_size": side}), note


def _normalise_as_pretrained(data: dict, encoder) -> None:
    """Normalise the images as the pretrained model's own data config says (timm's resolve_data_config,
    torchvision's weights), not with the training set's statistics; a grey dataset gets the channels'
    mean."""
    found = zoo.data_config(encoder)
    if found is None:
        return
    mean, std = found["mean"], found["std"]
    if len(mean) != data["in_channels"]:
        mean, std = [sum(mean) / len(mean)] * data["in_channels"], [sum(std) / len(std)] * data["in_channels"]
    for split in ("train", "val", "test"):
        if split in data:
            data[split].set_statistics(mean, std)
    data["mean"], data["std"] = mean, std


def images_per_epoch(loader) -> int:
    """Training images an epoch's steps show (a dropped last partial batch is not shown)."""
    return min(len(loader) * loader.batch_size, len(loader.labels))


def planned_steps(tc, loader) -> int:
    """Optimizer steps to train over this training loader (steps_for)."""
    return steps_for(tc, len(loader), images_per_epoch(loader))


def steps_for(tc, batches: int, images: int) -> int:
    """Optimizer steps to train, from an epoch's `batches` and the `images` they show (also what a plan
    counts without the data: experiments.cost). train.epochs x steps per epoch, to the nearest step (at
    least one for any epochs above 0), so that 5.5 epochs end the sixth halfway (airbench's fractional epochs
    count steps too).
    With train.images_seen: the whole epochs nearest to that budget (at least one), counted in the images an
    epoch's steps show (images_per_epoch): with the last partial batch dropped, 1,000 images in batches of
    256 are 768 per epoch, so 200,000 images buy 260 epochs, not 200."""
    if tc.images_seen is None:
        return max(round(tc.epochs * batches), 1 if tc.epochs > 0 else 0)
    return max(1, round(tc.images_seen / max(1, images))) * batches


def images_shown(steps: int, loader) -> int:
    """Training images `steps` optimizer steps show: whole epochs, then the full batches of a last partial one."""
    whole, rest = divmod(steps, max(1, len(loader)))
    return whole * images_per_epoch(loader) + rest * loader.batch_size


def _start(run: RunDir, training: Training, checkpoint: dict | None, overwrite: bool, device) -> None:
    """Restore the checkpoint, or write the new run's config and meta. Only now, with the data read, the
    model built and the checkpoint restored, is anything removed: the old run with --overwrite, and in
    any case what described the weights about to change."""
    if checkpoint is not None:
        _check_same_data(checkpoint, training.data)
        training.restore(checkpoint)
        logged = [r for r in run.read_metrics() if r["epoch"] <= training.epoch]
    if overwrite:
        run.clear()
    else:
        run.clear_derived()
    if checkpoint is not None:
        run.rewrite_metrics(logged)
        bf16 = use_bf16(training.config.train.bf16, device)  # auto may mean another thing on this device
        started = run.record_resume(training.epoch, str(device), bf16)
        if started is not None and started != bf16 and run.writable:
            print(f"note: this run started {'with' if started else 'without'} bf16 autocast and goes on "
                  f"{'with' if bf16 else 'without'} it here (train.bf16: {training.config.train.bf16}); "
                  "the run's 'resumed' record lists where each part trained", file=sys.stderr)
        return
    config, model = training.config, training.model
    run.write_config(config_mod.to_dict(config))
    run.rewrite_metrics([])
    meta = describe_environment(config.seed, str(device)) | zoo.versions(config.model.arch) | made(config.data)
    meta.update(num_params=sum(p.numel() for p in model.parameters()), classes=training.data["classes"],
                bf16=use_bf16(config.train.bf16, device))  # what train.bf16 (auto too) meant on this device
    run.write_meta(meta)


def _loop(run: RunDir, training: Training, ctx, verbose: bool, callbacks: list) -> None:
    """The epochs still to train; a stop signal ends the current step, writes a checkpoint and raises."""
    config, data, tc = training.config, training.data, training.config.train
    steps = training.steps
    if verbose and 0 < steps < 100:
        print(f"note: only {steps} optimizer steps; batch-norm running statistics may lag behind, so test "
              "accuracy (eval mode) can be far below training accuracy; use more epochs or a smaller batch",
              file=sys.stderr)
    if verbose and emulated_bf16(tc.bf16, next(training.model.parameters()).device):
        print(f"note: {EMULATED_BF16}; use --bf16 auto (or --set train.bf16=auto)", file=sys.stderr)
    on_step = training.lookahead.step if training.lookahead is not None else None
    stepper = Stepper(training.optimizer, training.scheduler, tc, training.model, on_step, training.ema, training.scaler)
    with StopSignals() as stop:
        for epoch in range(training.epoch, training.epochs):
            _whiten_bias(training.model, config.model, epoch)
            limit = min(len(data["train"]), steps - epoch * len(data["train"]))  # the last epoch may end early
            with tqdm(total=limit, desc=f"epoch {epoch + 1}/{training.epochs}", leave=False,
                      disable=None if verbose else True, file=sys.stderr) as progress:
                partial, training.partial = training.partial, None
                record = {"epoch": epoch + 1, "lr": partial["lr"] if partial else training.optimizer.param_groups[0]["lr"]}
                record.update(train_epoch(training.stepped, data["train"], stepper, tc, config.seed, epoch, progress,
                                          partial, stop, ctx, limit))
            if "partial" in record:
                run.save_checkpoint(training.state({**record["partial"], "lr": record["lr"]}))
                raise Interrupted(f"stopped by {stop.received} in epoch {epoch + 1} after step "
                                  f"{record['partial']['step']} of {limit}; checkpoint written; "
                                  f"continue with: fixedhead train --out {run.path} --resume")
            training.best = _end_epoch(run, record, training.evaluated(), data, training.plateau, tc, training.best,
                                       config)
            training.epoch, training.train_time_s = epoch + 1, training.train_time_s + record["epoch_time_s"]
            training.losses = (training.losses or (record["train_loss"],))[:1] + (record["train_loss"],)
            training.end_loss = record["train_loss_end"]
            run.save_checkpoint(training.state())
            if verbose:
                print(_epoch_line(record, training.epochs), file=sys.stderr, flush=True)
            for callback in callbacks:
                callback(record)


def _check_whiten_bias(config, model, ctx) -> None:
    if config.model.whiten_bias_epochs is None:
        return
    if first_conv(model.encoder).bias is None:
        raise UserError(f"model.whiten_bias_epochs needs a first convolution with a bias; {config.model.arch}'s has "
                        "none (airnet's has one)")
    if ctx.world > 1:
        raise UserError("model.whiten_bias_epochs is not offered under torchrun (DistributedDataParallel keeps the "
                        "set of trained parameters fixed); leave it unset there")


def _whiten_bias(model, model_cfg, epoch: int) -> None:
    """model.whiten_bias_epochs: the first convolution's bias learns in epochs 0..N-1 only. Frozen, nothing
    before the second convolution needs a gradient, so backward skips that convolution's input gradient at
    full resolution (airbench93's rule: the later epochs are cheaper)."""
    if model_cfg.whiten_bias_epochs is not None:
        cast(torch.Tensor, first_conv(model.encoder).bias).requires_grad_(epoch < model_cfg.whiten_bias_epochs)


def _wrap(step: LossOf, tc, ctx, device) -> Any:
    """The module the training steps call: DistributedDataParallel under torchrun, compiled if asked."""
    distributed.check_same_everywhere(step.model.head.identity(), "class vectors")
    if tc.sync_bn and device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA devices (SyncBatchNorm is GPU-only); on CPUs each process "
                        "keeps batch-norm statistics over its share of the batch")
    wrapped: torch.nn.Module = step
    if torch.distributed.is_initialized():
        if tc.sync_bn:
            wrapped = torch.nn.SyncBatchNorm.convert_sync_batchnorm(step)  # in place: the model's layers are replaced
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped,
                                                            device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(wrapped) if tc.compile else wrapped


def _end_epoch(run: RunDir, record: dict, model, data, plateau, tc, best, config):
    """Check the loss, validate, step the plateau schedule, track the best weights, log the epoch."""
    if not math.isfinite(record["train_loss"]):
        _fail(run, record, config)
    if "val" in data:
        record.update(_evaluate(model, data["val"], tc, "val"))
        if plateau is not None:
            plateau.step(record[f"val_{tc.plateau_on}"])
        if tc.select == "best_val" and (best is None or record["val_acc"] > best["val_acc"]):
            best = {"epoch": record["epoch"], "val_acc": record["val_acc"],
                    "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if tc.log_test:  # monitoring only: nothing below reads it
        record.update(_evaluate(model, data["test"], tc, "test"))
    record.update(head_numbers(model.head))
    run.append_metrics(record)
    return best


def _epoch_line(record: dict, epochs: int) -> str:
    val = f"  val_acc {record['val_acc']:.4f}" if "val_acc" in record else ""
    return (f"epoch {record['epoch']}/{epochs}  loss {record['train_loss']:.4f}  train_acc {record['train_acc']:.4f}"
            f"{val}  lr {record['lr']:.4g}  {record['images_per_s']:.0f} img/s")


def _fail(run: RunDir, record: dict, config) -> None:
    message = (f"training diverged: loss is {record['train_loss']} in epoch {record['epoch']} at learning rate "
               f"{record['lr']:.4g}; try a lower --lr, a longer warm-up or no bf16")
    run.write_final({"status": "diverged", "error": message, "epochs": record["epoch"] - 1,
                                        "seed": config.seed})
    raise UserError(message)


def _finish(run: RunDir, training: Training) -> dict:
    config, model, data, best = training.config, training.model, training.data, training.best
    if best is not None or training.ema is not None:  # the final weights: the best on validation, or the EMA's
        model.load_state_dict(best["model"] if best is not None else training.evaluated().state_dict())
    start = time.perf_counter()
    counts = data["train_counts"]
    test = _evaluate(model, data["test"], config.train, "test", counts)
    test_time_s = time.perf_counter() - start
    run.clear_derived()  # an analysis made of a checkpoint while training ran describes other weights
    run.save_model({"model": model.state_dict(), "config": config_mod.to_dict(config), **_data_meta(data)})
    final = {
        "status": outcome(training.losses, training.end_loss, len(data["classes"])), **test,
        "train_losses": list(training.losses or ()), "train_loss_end": training.end_loss,
        "train_time_s": training.train_time_s, "test_time_s": test_time_s,
        "tta": config.train.tta, "epochs": training.epochs, "steps": training.steps,
        "train_images": len(data["train"].labels), "images_seen": images_shown(training.steps, data["train"]),
        "selected_epoch": best["epoch"] if best else training.epochs, "seed": config.seed,
        "num_test": len(data["test"].labels), "val_fraction": data["val_fraction"], "train_class_counts": counts,
    }
    if "val" in data:  # the final (selected) weights on validation, whatever train.select chose them by
        final.update(_evaluate(model, data["val"], config.train, "val"))
    run.write_final(final)
    return final
