"""What a planned sweep costs before it runs, for `sweep --dry-run --on ray|slurm`: GPU-hours estimated
from each run's arithmetic and its host-side floor, without its data.

For each distinct model (architecture, head, classes, input shape) one training step is counted on the
meta device (no arithmetic is done, nothing is downloaded): its forward's floating-point operations per
image, by torch.utils.flop_counter (backward: twice the forward), and the operations it dispatches. A run's training step
then takes max(step FLOPs / rate, operations x HOST_S_PER_OP): the GPU's arithmetic, or the host issuing
the step's kernels one by one where they are small (eager PyTorch spends some 10-30 us of host time per
operation; batch 32 on CIFAR is there). Its evaluation passes (validation each epoch, the test set at the
end, every epoch with train.log_test) take FLOPs / rate. `rate` is the sustained GPU throughput assumed,
printed with the estimate (the default is about a third of an A100's dense bf16 peak, typical of
convolution nets in mixed precision; a V100 in float32 sustains about 10). Data loading and the sweep's
`after` measurements are not counted.

The training-set sizes are those of the published datasets (DatasetSpec.size); a run on an image folder
or other data whose size is known only from its files is listed as not estimated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config

DEFAULT_TFLOPS = 100.0
HOST_S_PER_OP = 20e-6


@dataclass(frozen=True)
class StepCost:
    train_flops: float  # forward + backward, per image: 3 x the forward
    eval_flops: float  # forward in eval mode, per image
    host_s: float  # seconds the host takes to issue one training step: its operations x HOST_S_PER_OP


@dataclass
class Estimate:
    gpu_hours: float
    flops: float
    runs: int
    not_estimated: list  # names of runs whose data size is unknown
    tflops: float

    def line(self) -> str:
        missing = (f"; {len(self.not_estimated)} run(s) not estimated (their data's size is known only from its files)"
                   if self.not_estimated else "")
        return (f"estimate: {self.gpu_hours:,.1f} GPU-hours for {self.runs} run(s), {self.flops / 1e15:,.1f} PFLOP of "
                f"training and evaluation at {self.tflops:g} TFLOP/s sustained, or the host's pace where that is slower "
                f"(--gpu-tflops sets the rate; data loading and `after` measurements not counted){missing}")


def _data_shape(data_cfg) -> tuple[int, int, int, int, int] | None:
    """(train images, test images, channels, side, classes) of the data a config names, without reading it."""
    from ..data import DATASETS

    size = DATASETS[data_cfg.name].size if data_cfg.name in DATASETS else None
    if size is None:
        return None
    train, test, channels, side, classes = size(data_cfg)
    return train, test, channels, data_cfg.image_size or side, classes


@dataclass(frozen=True)
class Plan:
    steps: int  # optimizer steps
    batch: int
    evaluated: int  # images passed forward in evaluation: validation each epoch, test at the end (or each epoch)


def plan(config: Config, shape: tuple[int, int, int, int, int]) -> Plan:
    """A run's steps and evaluated images from its config and data shape, as fit counts them (planned_steps,
    prepare's hold-out and long tail), assuming balanced classes as the published sets have."""
    from ..config import needs_validation
    from ..data.pipeline import batches_per_epoch, held_out, long_tail_counts
    from ..training.fit import steps_for

    train, test, _, _, classes = shape
    data_cfg, tc = config.data, config.train
    fraction = data_cfg.val_fraction or (0.1 if needs_validation(config) else 0.0)
    val = classes * held_out(train // classes, fraction)
    kept = train - val
    if data_cfg.imbalance != 1:
        kept = sum(long_tail_counts([kept // classes] * classes, data_cfg.imbalance, data_cfg.imbalance_type))
    per_epoch = batches_per_epoch(kept, tc.batch_size, drop_last=kept > tc.batch_size)  # as prepare's loader
    steps = steps_for(tc, per_epoch, min(per_epoch * tc.batch_size, kept))
    epochs = -(-steps // per_epoch)
    return Plan(steps, tc.batch_size, val * epochs + test * (epochs if tc.log_test else 1))


def step_cost(model_cfg, classes: int, channels: int, side: int) -> StepCost:
    """Count one training step of this model on the meta device (batch 2, per image)."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode  # the documented way to see dispatched operations
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.classifier import build_model

    class Operations(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    plain = dataclasses.replace(model_cfg, pretrained=False, weights=None)  # the arithmetic, not the weights
    model = build_model(plain, 0, classes, channels, side).to("meta")
    images = torch.empty(2, channels, side, side, device="meta")
    labels = torch.zeros(2, dtype=torch.long, device="meta")
    with Operations() as operations:
        F.cross_entropy(model(images), labels).backward()
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    forward = counter.get_total_flops() / 2
    # Backward costs twice the forward (gradients of the inputs and of the weights), the usual rule; the
    # counter's own backward count is not used: it loses the group division of a grouped convolution's
    # weight gradient (a depthwise convolution counts 65x its forward in torch 2.14).
    return StepCost(3 * forward, forward, operations.count * HOST_S_PER_OP)


def estimate(named_configs: list[tuple[str, Config]], tflops: float = DEFAULT_TFLOPS) -> Estimate:
    """GPU-hours of these (run name, Config) pairs at `tflops` sustained (see the module's docstring)."""
    rate = tflops * 1e12
    costs: dict[tuple, StepCost] = {}
    total_s, total_flops, missing = 0.0, 0.0, []
    from ..training.fit import pretrained_input_size

    for name, config in named_configs:
        config, _ = pretrained_input_size(config)  # the side fit will train at
        shape = _data_shape(config.data)
        if shape is None:
            missing.append(name)
            continue
        channels, side, classes = shape[2:]
        key = (repr(dataclasses.replace(config.model, head_seed=None)), classes, channels, side)
        if key not in costs:
            costs[key] = step_cost(config.model, classes, channels, side)
        cost, run = costs[key], plan(config, shape)
        step_flops, eval_flops = cost.train_flops * run.batch, cost.eval_flops * run.evaluated
        total_s += run.steps * max(step_flops / rate, cost.host_s) + eval_flops / rate
        total_flops += run.steps * step_flops + eval_flops
    return Estimate(total_s / 3600, total_flops, len(named_configs), missing, tflops)
