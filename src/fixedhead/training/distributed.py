"""torchrun support: one process per device, each training on its slice of every global batch.

`torchrun --nproc_per_node N -m fixedhead train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them everything here is a no-op and training is single-process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()  # a process on its own


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (nccl on GPUs, gloo on CPUs); pick this rank's device.

    Under torchrun the group is joined even with one process, so that a one-GPU launch runs the
    same DistributedDataParallel / SyncBatchNorm / nccl path as a many-GPU one.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Context(), device
    world, rank, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world), device


def check_same_everywhere(tensor: torch.Tensor, what: str) -> None:
    """Fail on every rank if `tensor` differs between ranks (e.g. class vectors drawn from the seed)."""
    if not dist.is_initialized():
        return
    digest = int(hashlib.sha256(tensor.detach().cpu().numpy().tobytes()).hexdigest()[:12], 16)
    gathered: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    if len(set(gathered)) != 1:
        raise UserError(f"{what} differ between ranks; every rank must build the model from the same seed")


def sum_across(values: list[float], device) -> list[float]:
    """Element-wise sum over ranks (a no-op in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_across(values: list[float], device) -> list[list[float]]:
    """Every rank's `values`, in rank order ([values] in a single process)."""
    if not dist.is_initialized():
        return [list(values)]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return [t.tolist() for t in gathered]


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
