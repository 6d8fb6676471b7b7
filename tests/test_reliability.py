"""Faults injected for real: signals to real processes, torn files, full disks, hostile archives."""

import errno
import json
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
from fixedhead.files import atomic_write
from fixedhead.runs import RunDir
from interrupts import same_result, wait_for
from tiny import TINY_FLAGS

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
        RunDir(tmp_path).load_model()


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "model.pt")
    with pytest.raises(UserError, match="cannot load"):
        RunDir(tmp_path).load_model()


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


# ---- derived files, locks, resume, metrics (issue: no result may be silently wrong) ------------

FAST_RUN = [*TINY_FLAGS, "--epochs", "1"]


def test_overwrite_and_retraining_remove_what_described_the_old_weights(tmp_path, capsys):
    from fixedhead.cli import main

    out = tmp_path / "run"
    assert main(["train", *FAST_RUN, "--out", str(out)]) == 0
    assert main(["analyze", str(out), "--device", "cpu"]) == 0
    assert main(["robustness", str(out), "--corruptions", "none", "--device", "cpu"]) == 0
    old = torch.load(out / "analysis" / "matrices.pt", weights_only=True)["class_vector_cosine"]
    (out / "failure.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    assert main(["train", *FAST_RUN, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "analysis").exists() and not (out / "evaluation.json").exists()
    assert not (out / "failure.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert main(["compare", str(out), "--device", "cpu"]) == 0  # analyses the new weights afresh
    new = json.loads((out / "analysis" / "analysis.json").read_text())
    assert new["acc"] == pytest.approx(json.loads((out / "final.json").read_text())["test_acc"])
    cosines = torch.load(out / "analysis" / "matrices.pt", weights_only=True)["class_vector_cosine"]
    assert not torch.equal(cosines, old)  # seed 1 draws other class vectors


def test_an_analysis_of_a_checkpoint_does_not_survive_the_end_of_training(tmp_path):
    from fixedhead.config import make_config
    from fixedhead.evaluation.analysis import analyze
    from fixedhead.training.fit import fit

    config = make_config({"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 2,
                          "train.batch_size": 128})
    out = tmp_path / "run"

    class StopAfterOneEpoch(Exception):
        pass

    import fixedhead.training.fit as train_module

    original = train_module._epoch_line
    calls = []

    def stop_after_first(record, epochs):
        calls.append(record)
        if len(calls) == 1:
            raise StopAfterOneEpoch
        return original(record, epochs)

    train_module._epoch_line = stop_after_first
    try:
        with pytest.raises(StopAfterOneEpoch):
            fit(config, out)
        assert analyze(out, device="cpu")["source"].startswith("checkpoint.pt")
        fit(config, out, resume=True)
    finally:
        train_module._epoch_line = original
    assert not (out / "analysis").exists()


def test_the_lock_is_released_when_training_ends_or_fails(tmp_path):
    run = RunDir(tmp_path / "run")
    with run.lock():
        from fixedhead.runs import RunInUse

        with pytest.raises(RunInUse):
            with RunDir(tmp_path / "run").lock():
                pass
    with run.lock():  # free again
        pass


def test_resume_with_the_same_flags_or_another_device_is_accepted(tmp_path, capsys):
    from fixedhead.cli import main

    out = tmp_path / "run"
    args = ["--data", "digits", "--arch", "fastnet-small", "--epochs", "2", "--batch-size", "128", "--quiet"]
    assert main(["train", *args, "--out", str(out)]) == 0
    (out / "final.json").unlink()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert main(["train", *args, "--device", "cpu", "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "final.json").read_text())["status"] == "finished"


def test_a_damaged_metrics_line_keeps_the_good_ones_visible(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    run.append_metrics({"epoch": 3})
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2, 3]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(UserError, match="line 2 is not an epoch record"):
        run.read_metrics()


# ---- writes: full disk for real, modes -----------------------------------------------------------

class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` bytes, as a full disk does."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def _fill_disk_after(monkeypatch, room: int):
    import fixedhead.files as files

    real_fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode), room))


def test_a_full_disk_during_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    from fixedhead.files import save_torch

    target = tmp_path / "checkpoint.pt"
    save_torch(target, {"w": torch.ones(3)})
    _fill_disk_after(monkeypatch, 1000)
    with pytest.raises(UserError, match="cannot write .*checkpoint.pt: No space left on device"):
        save_torch(target, {"w": torch.zeros(10000)})
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_during_a_figure_leaves_no_empty_png(tmp_path, monkeypatch):
    import numpy as np

    from fixedhead import plots

    _fill_disk_after(monkeypatch, 100)
    with pytest.raises(UserError, match="No space left on device"):
        plots.class_vector_heatmap(np.eye(3), ["a", "b", "c"], tmp_path / "heat", "title")
    assert list(tmp_path.iterdir()) == []


def test_written_files_and_cache_folders_honour_the_umask(tmp_path, monkeypatch):
    import numpy as np

    from fixedhead.data import cache
    from fixedhead.files import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        cache.store_entry(tmp_path / "cache", "key", np.zeros((1, 1, 2, 2), np.uint8), np.zeros(1, np.int64), ["a"])
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "cache" / "key").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "cache" / "key" / "images.npy").stat().st_mode & 0o777 == 0o644


def test_the_umask_is_read_without_being_changed(monkeypatch):
    from fixedhead import files

    set_calls = []
    real = os.umask
    old = real(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda mask: set_calls.append(mask) or real(mask))
        assert files.umask() == 0o027
        if os.path.exists("/proc/self/status"):
            assert set_calls == []  # read from /proc: never set, so no other thread sees 0o022
    finally:
        real(old)


def test_archive_modes_are_sanitised(tmp_path):
    import io

    from fixedhead.data.download import safe_extract

    tar_path = tmp_path / "modes.tar"
    with tarfile.open(tar_path, "w") as archive:
        top = tarfile.TarInfo(".")
        top.type, top.mode = tarfile.DIRTYPE, 0o777
        archive.addfile(top)
        setuid = tarfile.TarInfo("data/tool")
        setuid.size, setuid.mode = 1, 0o4777
        archive.addfile(setuid, io.BytesIO(b"x"))
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    safe_extract(tar_path, target)
    mode = (target / "data" / "tool").stat().st_mode
    assert not mode & 0o4000 and not mode & 0o022  # no set-uid, no group/other write
    assert not target.stat().st_mode & 0o022
