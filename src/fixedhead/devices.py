"""Which device a run uses and how it computes there: the one place train, evaluation and sweeps ask."""

from __future__ import annotations

import contextlib
import ctypes
import platform

import torch

from .errors import UserError, shown


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N; anything else, or a device this
    machine lacks, is one error saying what is accepted."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or device.type == "cpu" and device.index:
        raise UserError(f"unknown device {shown(name)}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                        "device(s); use cuda:N with N below that, or cuda")
    return device


# What a run asking for bf16 autocast is told where native_bf16 is false (fit and sweep say it the same way).
EMULATED_BF16 = ("this CPU has no bf16 instructions, so bf16 autocast is emulated and several times slower than "
                 "float32 here")


def native_bf16(device) -> bool:
    """Whether bf16 autocast is fast on `device`: CUDA, or a CPU with bf16 instructions. On x86 that is
    AVX-512 BF16 or AMX: oneDNN also runs bf16 on AVX-512 CPUs without them (its own check says yes there),
    converting in software, and that is slower than float32 (docs/speed.md); on AVX2 PyTorch emulates bf16,
    several times slower. Elsewhere (ARM) oneDNN's check decides."""
    if torch.device(device).type == "cuda":
        return True
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


def use_bf16(bf16, device) -> bool:
    """train.bf16 on `device`: true or false as set; auto is on where bf16 is fast (native_bf16)."""
    return native_bf16(device) if bf16 == "auto" else bool(bf16)


def emulated_bf16(bf16, device) -> bool:
    """Whether train.bf16 asks for bf16 outright (true, not auto) on a device that only emulates it."""
    return bf16 is True and not native_bf16(device)


def autocast(device: torch.device, bf16, fp16: bool = False):
    """bf16 autocast on `device` when asked (train.bf16: true, or auto where native), float16 with `fp16`
    (train.fp16, whose gradients a scaler keeps in range: training.stepping), else nothing."""
    if fp16:
        return torch.autocast(device.type, dtype=torch.float16)
    if not use_bf16(bf16, device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory in the process for reuse instead of handing it back to the OS (for the
    whole process, from now on); True where that took effect, False off glibc. fit calls it on the CPU.

    Why: PyTorch's CPU tensors come from malloc, and glibc serves every block over 32 MiB (a batch of 1,024
    images' activations) with a fresh mmap and unmaps it on free, so each training step faults all its
    activation pages in again and zero-fills them. Keeping them (no mmap, no trimming) makes CPU steps faster
    (benchmarks/cpu_allocator.py measures by how much), at the cost
    of the process keeping its peak memory until it exits, as CUDA's caching allocator does. Hand-written:
    the usual advice, jemalloc or tcmalloc, needs a system library preloaded before Python starts; glibc's
    own documented mallopt does the same in the running process."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
