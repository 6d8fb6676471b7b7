"""Faults injected for real: signals to real processes, torn files, full disks, hostile archives."""

import errno
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch

from fixedhead.errors import UserError
from fixedhead.runs import RunDir, atomic_write
from interrupts import same_result, wait_for

TRAIN = [sys.executable, "-m", "fixedhead", "train", "--data", "digits", "--arch", "fastnet-small", "--epochs", "4",
         "--batch-size", "32", "--lr", "0.05", "--quiet"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    subprocess.run(TRAIN + ["--out", str(out)], check=True, timeout=300)
    return out


def test_sigkill_at_several_moments_then_resume_is_bit_identical(uninterrupted, tmp_path):
    out = tmp_path / "run"
    for delay in (0.3, 1.1, 0.6):  # after each first checkpoint, the kill lands at a different moment
        process = subprocess.Popen(TRAIN + ["--out", str(out), "--resume"], stderr=subprocess.DEVNULL)
        wait_for(out / "checkpoint.pt")
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = subprocess.run(TRAIN + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert same_result(uninterrupted, out)


def test_sigterm_finishes_the_step_checkpoints_and_says_how_to_resume(uninterrupted, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(TRAIN + ["--out", str(out)], stderr=subprocess.PIPE, text=True)
    wait_for(out / "metrics.jsonl")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130 and "stopped by SIGTERM" in err and "--resume" in err
    assert "Traceback" not in err
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    done = subprocess.run(TRAIN + ["--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert same_result(uninterrupted, out), f"resumed from {checkpoint['epoch']} epochs + {checkpoint['partial']}"


def test_torn_metrics_line_is_dropped(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_disk_full_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "final.json"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match="cannot write .*final.json: No space left on device"):
        atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["final.json"]


def test_torn_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(UserError, match="cannot load .*model.pt"):
        RunDir(tmp_path).load("model.pt")


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "model.pt")
    with pytest.raises(UserError, match="cannot load"):
        RunDir(tmp_path).load("model.pt")


@pytest.mark.parametrize("name", ["../escape.txt", "/abs.txt", "ok/../../escape.txt"])
def test_archives_cannot_write_outside_their_folder(tmp_path, name):
    import io

    from fixedhead.data.download import safe_extract

    tar_path = tmp_path / "bad.tar.gz"
    with tarfile.open(tar_path, "w:gz") as archive:
        info = tarfile.TarInfo(name)  # set by hand: tarfile.add would strip a leading "/"
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UserError, match="refusing to extract"):
        safe_extract(tar_path, tmp_path / "target")
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr(name, "x")
    with pytest.raises(UserError, match="refusing to extract"):
        safe_extract(zip_path, tmp_path / "target")
    assert not (tmp_path / "escape.txt").exists()


def test_archive_links_out_of_the_folder_are_refused(tmp_path):
    from fixedhead.data.download import safe_extract

    tar_path = tmp_path / "link.tar"
    with tarfile.open(tar_path, "w") as archive:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(UserError, match="refusing to extract"):
        safe_extract(tar_path, tmp_path / "target")


def test_good_archive_extracts(tmp_path):
    from fixedhead.data.download import safe_extract

    (tmp_path / "src" / "cifar-10-batches-py").mkdir(parents=True)
    (tmp_path / "src" / "cifar-10-batches-py" / "batches.meta").write_text("m")
    with tarfile.open(tmp_path / "ok.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    safe_extract(tmp_path / "ok.tar.gz", tmp_path / "target")
    assert (tmp_path / "target" / "cifar-10-batches-py" / "batches.meta").read_text() == "m"
