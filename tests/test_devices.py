"""keep_freed_memory against glibc's own accounting (mallinfo2), in a fresh process: the setting is
process-wide, so it is tried where nothing has set it yet."""

import json
import platform
import subprocess
import sys

import pytest

from fixedhead import fit
from fixedhead.config import make_config

# Allocates and frees a 64 MiB tensor once before keep_freed_memory and six times after it, then a 256 MiB one
# (more than all the free memory then, so it comes from the top of the heap, where freeing can hand memory
# back), and reports what glibc says each time: bytes held by mmap while the tensor lives, bytes free in the
# heap after it is freed, the heap's size.
PROBE = r"""
import ctypes, json, torch
import fixedhead.training.fit  # the modules a training process holds: in a bare process small allocations land
from fixedhead.devices import keep_freed_memory  # above the freed block and the heap grows a block per cycle
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
def cycle(size=64 << 20):
    tensor = torch.ones(size, dtype=torch.uint8)
    mmapped = libc.mallinfo2().hblkhd
    del tensor
    info = libc.mallinfo2()
    return {"mmapped": mmapped, "free": info.fordblks, "heap": info.arena}
report = {"default": cycle()}
report["kept"] = keep_freed_memory()
report["cycles"] = [cycle() for _ in range(6)]
report["bigger"] = cycle(256 << 20)
print(json.dumps(report))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="keep_freed_memory acts on glibc only")


@glibc
def test_freed_memory_stays_in_the_heap_and_is_reused():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout)
    size = 64 << 20
    assert report["default"]["mmapped"] >= size  # glibc's default: a block this big is its own mmap
    assert report["kept"] is True
    cycles = report["cycles"]
    assert all(cycle["mmapped"] < size for cycle in cycles)  # from the heap now
    assert all(cycle["free"] >= size for cycle in cycles)  # freed, kept for reuse, not handed back
    # Reused: without reuse the heap would grow by a block per cycle (five over six). A small allocation can
    # split the freed block once, so the next tensor extends the heap by one block; after that they merge and
    # the heap stays put (seen in CI, and in 2 of 8 runs here).
    assert cycles[-1]["heap"] - cycles[0]["heap"] <= size
    assert report["bigger"]["free"] >= 4 * size  # freed at the top of the heap and still not handed back


def test_fit_keeps_freed_memory_on_the_cpu(tmp_path, monkeypatch):
    import fixedhead.training.fit
    calls = []
    monkeypatch.setattr(fixedhead.training.fit, "keep_freed_memory", lambda: calls.append(1) or True)
    fit(make_config({"data.name": "digits", "model.arch": "resnet20", "train.epochs": 0.05, "train.device": "cpu"}),
        tmp_path / "run", verbose=False)
    assert calls == [1]


def test_bf16_counts_as_native_only_with_bf16_instructions():
    """On x86, bf16 autocast is fast only with AVX-512 BF16 or AMX: read independently from the kernel's list
    of CPU flags. (oneDNN's own check also says yes on AVX-512 CPUs without them, where bf16 is slower.)"""
    from pathlib import Path

    import torch

    from fixedhead.devices import native_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        pytest.skip("needs Linux on x86_64 (the CPU flags in /proc/cpuinfo)")
    flags = set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    assert native_bf16("cpu") == bool({"avx512_bf16", "amx_bf16"} & flags)
    assert native_bf16(torch.device("cpu")) == native_bf16("cpu")


def test_elsewhere_than_x86_onednns_check_decides(monkeypatch):
    import torch

    from fixedhead import devices

    monkeypatch.setattr(devices.platform, "machine", lambda: "aarch64")
    for answer in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda answer=answer: answer)
        assert devices.native_bf16("cpu") is answer
