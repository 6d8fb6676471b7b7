"""Hostile inputs, round three: nothing is deleted or overwritten that fixedhead did not write, and nothing
is written outside the run folder. Each case: exit 2, one line on stderr, no traceback, every file that was
there before unchanged."""

import os
import shutil
from pathlib import Path

import pytest

from fixedhead.cli import main
from tiny import TINY_FLAGS


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _refused(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_someone_elses_files_is_never_taken_for_a_run(tmp_path, capsys, overwrite):
    project = tmp_path / "proj"
    (project / "analysis" / "notebooks").mkdir(parents=True)
    (project / "analysis" / "notebooks" / "thesis.ipynb").write_text("{}")
    (project / "evaluation.json").write_text('{"mine": 1}')
    (project / "config.yaml").write_text("my: own\n")
    before = _snapshot(project)
    err = _refused(capsys, "train", *TINY_FLAGS, "--epochs", "1", "--out", project, *(["--overwrite"] if overwrite else []))
    assert "did not write" in err and "not a fixedhead run" in err
    assert _snapshot(project) == before


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    for command in (["train", *TINY_FLAGS, "--epochs", "1"], ["sweep", "smoke/pipeline"], ["demo", "--data", "digits"]):
        assert "non-empty path" in _refused(capsys, *command, "--out", "")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_overwrite_removes_only_what_fixedhead_wrote_in_the_analysis_folder(tmp_path, capsys, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert main(["analyze", str(run)]) == 0
    written = sorted(p.name for p in (run / "analysis").iterdir())
    assert "analysis.json" in written and any(name.endswith(".png") for name in written)
    (run / "analysis" / "my-notes.md").write_text("mine")
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(run), "--overwrite"]) == 0
    capsys.readouterr()
    assert [p.name for p in (run / "analysis").iterdir()] == ["my-notes.md"]


def test_an_analysis_folder_that_links_elsewhere_is_refused_and_the_target_untouched(tmp_path, capsys, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (run / "analysis").symlink_to(elsewhere, target_is_directory=True)
    assert "is a link or a file" in _refused(capsys, "analyze", run)
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


def test_overwrite_clears_the_old_tracker_logs(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    argv = ["train", *TINY_FLAGS, "--epochs", "1", "--log", "tensorboard", "--out", str(out)]
    assert main(argv) == 0
    first = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert first and main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    second = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert len(second) == len(first) and not set(first) & set(second)  # the old run's curves are gone


# ---- never hang on a FIFO, never expand a small input into unbounded work --------------------------------


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_where_a_file_is_read(tmp_path, capsys, tiny_run, image_folder):
    fifo = _fifo(tmp_path / "config.yaml")
    assert "is a FIFO" in _refused(capsys, "train", *TINY_FLAGS, "--config", fifo, "--out", tmp_path / "r")
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "final.json").unlink()
    _fifo(run / "final.json")
    assert "is a FIFO" in _refused(capsys, "train", "--out", run, "--resume", "--quiet")
    _fifo(image_folder / "train" / "cat" / "zz.png")
    err = _refused(capsys, "train", "--data", "imagefolder", "--data-dir", image_folder, "--epochs", "1",
                   "--out", tmp_path / "r2", "--quiet")
    assert "is a FIFO" in err and "zz.png" in err


def test_counts_are_bounded_before_any_work(tmp_path, capsys, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert "--severities takes" in _refused(capsys, "robustness", run, "--severities", "1-1000000000000")
    assert "--severities takes" in _refused(capsys, "robustness", run, "--severities", "1," * 100_000 + "1")
    assert "integer in 0.." in _refused(capsys, "robustness", run, "--seed", "-1")
    assert "data.num_classes must be" in _refused(capsys, "data", "info", "glyphs", "--num-classes", "0")
    grid = tmp_path / "big.yaml"  # 6 keys of 10 values: a million runs from a few hundred bytes
    keys = ("train.lr", "train.epochs", "train.batch_size", "train.lookahead", "train.eval_batch_size", "seed")
    grid.write_text("grid:\n" + "".join(f"  {key}: [{', '.join(str(v) for v in range(1, 11))}]\n" for key in keys))
    assert "more than 10,000" in _refused(capsys, "sweep", grid, "--out", tmp_path / "sweep", "--dry-run")
    assert not (tmp_path / "sweep").exists()


def test_data_dir_without_a_dataset_that_reads_files_is_refused(tmp_path, capsys, image_folder):
    assert "reads no files" in _refused(capsys, "train", "--data-dir", image_folder, "--epochs", "1",
                                        "--out", tmp_path / "r", "--quiet")
    assert not (tmp_path / "r").exists()


def test_scoring_or_resuming_on_other_classes_is_refused(tmp_path, capsys, image_folder):
    from conftest import write_image_folder

    out = tmp_path / "run"
    flags = ["--arch", "fastnet-small", "--batch-size", "6", "--epochs", "1", "--quiet"]
    assert main(["train", "--data", "imagefolder", "--data-dir", str(image_folder), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    other = write_image_folder(tmp_path / "other", classes=("ant", "bee", "cow"))
    before = _snapshot(out)
    err = _refused(capsys, "score", out, "--data-dir", other)
    assert "'ant' there but 'cat' in the run" in err
    (out / "final.json").unlink()
    (out / "model.pt").unlink()
    before = _snapshot(out)
    err = _refused(capsys, "train", "--out", out, "--resume", "--data-dir", other, "--quiet")
    assert "other data than the run started on" in err and "ant" in err
    assert _snapshot(out) == before


def test_a_zero_std_in_the_weights_file_is_refused(tmp_path, capsys, tiny_run):
    import torch

    run = shutil.copytree(tiny_run, tmp_path / "run")
    state = torch.load(run / "model.pt", weights_only=True)
    torch.save({**state, "std": [0.0]}, run / "model.pt")
    assert "every std must be above 0" in _refused(capsys, "score", run)


def test_names_in_an_experiment_file_never_become_paths_outside_the_sweep(tmp_path, capsys):
    """A metric named like a path is drawn inside the sweep folder; sections the report could not read are
    refused by the sweep before anything trains."""
    from fixedhead.runs import SweepDir

    sweep = SweepDir(tmp_path / "sweep")
    for name in ("../../../x", "/etc/x", "a/../../b"):
        figure = sweep.figure(name)
        assert figure.parent == sweep.path and ".." not in figure.name
    for section, value in (("report", "{rows: [[a, b]]}"), ("report", "{compare: [[a, [b]]]}"),
                           ("report", "{select: {key: [train.lr], by: val_acc}}"), ("paper", "{test_acc: [1, 2]}")):
        path = tmp_path / f"{section}.yaml"
        path.write_text(f"variants: {{a: {{}}}}\n{section}: {value}\n")
        _refused(capsys, "sweep", path, "--out", tmp_path / "out", "--dry-run")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("losses", "abc"), ("losses", ["a", "b"]), ("best", "x"), ("best", {"epoch": 1}),
                                          ("partial", {"per_rank": "x"}), ("train_time_s", float("nan")),
                                          ("partial", {"per_rank": [[0.0, 0, 0]], "step": "a", "elapsed": 0.0, "lr": 0.1})])
def test_a_damaged_checkpoint_field_is_one_line_on_resume(tmp_path, capsys, tiny_run, field, value):
    import torch

    run = shutil.copytree(tiny_run, tmp_path / "run")
    for name in ("final.json", "model.pt"):
        (run / name).unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "epoch": 0, field: value}, run / "checkpoint.pt")
    before = _snapshot(run)
    assert f"{field} is" in _refused(capsys, "train", "--out", run, "--resume", "--quiet")
    assert _snapshot(run) == before


def test_an_analysis_of_weights_replaced_meanwhile_writes_nothing(tmp_path, capsys, tiny_run, monkeypatch):
    """An analyze that was still measuring the old weights when --overwrite retrained the run must not write
    its analysis beside the new weights (simulated: model.pt rewritten while the numbers are computed)."""
    from fixedhead.evaluation import analysis

    run = shutil.copytree(tiny_run, tmp_path / "run")
    measure = analysis.measure

    def retrained_meanwhile(outputs):
        (run / "model.pt").write_bytes((run / "model.pt").read_bytes() + b"")  # a new file: new inode and time
        return measure(outputs)

    monkeypatch.setattr(analysis, "measure", retrained_meanwhile)
    assert "changed while it was being evaluated" in _refused(capsys, "analyze", run)
    assert not (run / "analysis" / "analysis.json").exists()


@pytest.mark.parametrize("command", [["analyze"], ["robustness", "--corruptions", "none"]])
def test_an_analysis_or_evaluation_of_a_run_being_trained_is_refused(tmp_path, capsys, tiny_run, command):
    from fixedhead.runs import RunDir

    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = _snapshot(run)
    with RunDir(run).lock():  # as a training process holds it
        err = _refused(capsys, command[0], run, *command[1:])
    assert "in use by another fixedhead process" in err and "--out" not in err
    assert _snapshot(run) == before


def test_a_training_into_a_run_being_analysed_is_refused_and_the_analysis_completes(tmp_path, capsys, tiny_run,
                                                                                 monkeypatch):
    from fixedhead.evaluation import analysis

    run = shutil.copytree(tiny_run, tmp_path / "run")
    weights = (run / "model.pt").read_bytes()
    measure, codes = analysis.measure, []

    def retrain_meanwhile(outputs):
        codes.append(main(["train", *TINY_FLAGS, "--epochs", "1", "--out", str(run), "--overwrite"]))
        return measure(outputs)

    monkeypatch.setattr(analysis, "measure", retrain_meanwhile)
    assert main(["analyze", str(run)]) == 0 and codes == [2]
    assert "in use by another fixedhead process" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == weights and (run / "analysis" / "analysis.json").is_file()


def test_a_folder_name_that_is_not_utf8_is_printed_back_as_given(tmp_path, monkeypatch):
    """On a strict UTF-8 stdout (a UTF-8 locale), a name's undecodable byte reaches Python as a lone
    surrogate; printing it after training must not end in a traceback."""
    import io
    import sys

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    folder = os.fsdecode(bytes(tmp_path) + b"/run\xff")
    assert main(["train", *TINY_FLAGS, "--epochs", "1", "--out", folder]) == 0
    assert out.buffer.getvalue().rstrip().endswith(b"-> " + bytes(tmp_path) + b"/run\xff")


def _read_only(monkeypatch, folder: Path) -> None:
    """The folder is not writable (chmod does not stop root, so the permission check is told so)."""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != folder and access(path, mode, **kw))


@pytest.mark.parametrize("how", ["--overwrite", "--resume"])
def test_a_read_only_tracker_folder_is_refused_before_anything_changes(tmp_path, capsys, tiny_run, monkeypatch, how):
    """--overwrite used to remove the run's files and then fail on the tracker's events; --resume used to
    rewrite meta.json and then fail in TensorBoard's writer thread with a traceback."""
    pytest.importorskip("tensorboard")
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"old curves")
    if how == "--resume":
        (run / "final.json").unlink()
        (run / "model.pt").unlink()
    _read_only(monkeypatch, run / "tensorboard")
    before = _snapshot(run)
    flags = [*TINY_FLAGS, "--epochs", "1"] if how == "--overwrite" else ["--quiet"]
    err = _refused(capsys, "train", *flags, "--out", run, how, "--set", "train.log=tensorboard")
    assert "tensorboard" in err and "not writable" in err
    assert _snapshot(run) == before


def test_a_tracker_folder_that_links_elsewhere_is_refused(tmp_path, capsys, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (tmp_path / "elsewhere").mkdir()
    (run / "tensorboard").symlink_to(tmp_path / "elsewhere")
    before = _snapshot(tmp_path)
    err = _refused(capsys, "train", *TINY_FLAGS, "--epochs", "1", "--out", run, "--overwrite",
                   "--set", "train.log=tensorboard")
    assert "is a link or a file" in err
    assert _snapshot(tmp_path) == before and not any((tmp_path / "elsewhere").iterdir())


def test_a_file_in_a_read_only_folder_stops_an_overwrite_before_anything_is_removed(tmp_path, capsys, tiny_run,
                                                                                  monkeypatch):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "analysis").mkdir()
    (run / "analysis" / "analysis.json").write_text("{}")
    _read_only(monkeypatch, run / "analysis")
    before = _snapshot(run)
    err = _refused(capsys, "train", *TINY_FLAGS, "--epochs", "1", "--out", run, "--overwrite")
    assert "not writable; nothing was removed" in err
    assert _snapshot(run) == before
