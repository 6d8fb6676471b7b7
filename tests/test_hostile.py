"""Hostile and careless inputs against the CLI: each one is refused with exactly one line on stderr and
exit code 2, no traceback, nothing that existed before changed, and no payload run.

Each case builds its files in a fresh folder and returns (argv, words the one line must hold). Cases
are grouped by the class of fault in docs/reliability.md; the command runs in-process through
`fixedhead.cli.main`, the same code path as the console script (a few run as real processes too).
"""

import gzip
import hashlib
import json
import pickle
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from fixedhead.cli import main
from fixedhead.runs import RunDir
from formats import write_cifar10, write_cifar100
from tiny import TINY_FLAGS

FAST = TINY_FLAGS[2:]  # the tiny run's flags after --data digits
PAYLOAD = "pwned"  # the file a payload would write


@pytest.fixture
def trained_run(tiny_run):
    """The session's finished tiny run (conftest.py), copied into each case that needs a run folder."""
    return tiny_run


class Case:
    def __init__(self, tmp: Path, trained: Path, monkeypatch):
        self.tmp, self.trained, self.monkeypatch = tmp, trained, monkeypatch

    def run(self, name: str = "run") -> Path:
        """A copy of the finished run."""
        target = self.tmp / name
        shutil.copytree(self.trained, target)
        return target

    def file(self, name: str, content) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def payload_module(self, name: str) -> Path:
        """A module that writes the payload file when imported, importable as `name` (also as a numpy
        submodule when name starts with numpy.)."""
        folder = self.tmp / "modules"
        folder.mkdir(exist_ok=True)
        code = f"open({str(self.tmp / PAYLOAD)!r}, 'w').write('ran')\nx = ndarray = _reconstruct = scalar = print\n"
        (folder / f"{name.split('.')[-1]}.py").write_text(code)
        if name.startswith("numpy."):
            self.monkeypatch.setattr(np, "__path__", [*np.__path__, str(folder)])
        else:
            self.monkeypatch.syspath_prepend(str(folder))
        return folder


# ---- 1. dataset files that try to run code or hold odd contents ---------------------------------

def _cifar_with(case: Case, batch_bytes: bytes, which: str = "data_batch_1"):
    write_cifar10(case.tmp)
    (case.tmp / "cifar-10-batches-py" / which).write_bytes(batch_bytes)
    return ["data", "info", "cifar10", "--data-dir", str(case.tmp)]


def _global(module: str, name: str, protocol: int = 0) -> bytes:
    if protocol == 0:  # GLOBAL opcode, then an empty tuple and REDUCE: call module.name()
        return f"c{module}\n{name}\n)R.".encode()
    # protocol 4: STACK_GLOBAL from two strings
    body = b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode() + b"\x93)R."
    return b"\x80\x04" + body


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def _cifar_dict(**changes) -> dict:
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "batch_label": "x", "filenames": []}
    batch.update(changes)
    return batch


DATASET_CASES = {
    "numpy submodule that runs code on import": lambda c: (
        c.payload_module("numpy.evilsub"), _cifar_with(c, _global("numpy.evilsub", "ndarray")))[1],
    "numpy submodule, admitted name _reconstruct": lambda c: (
        c.payload_module("numpy.evilsub"), _cifar_with(c, _global("numpy.evilsub", "_reconstruct")))[1],
    "numpy submodule via STACK_GLOBAL": lambda c: (
        c.payload_module("numpy.evilsub"), _cifar_with(c, _global("numpy.evilsub", "scalar", 4)))[1],
    "plain module that runs code on import": lambda c: (
        c.payload_module("evilmod"), _cifar_with(c, _global("evilmod", "x")))[1],
    "os.system": lambda c: _cifar_with(c, f"cos\nsystem\n(S'touch {c.tmp / PAYLOAD}'\ntR.".encode()),
    "builtins.eval": lambda c: _cifar_with(c, f"cbuiltins\neval\n(S'open({str(c.tmp / PAYLOAD)!r},\"w\")'\ntR.".encode()),
    "payload in batches.meta": lambda c: (
        c.payload_module("numpy.evilsub"), _cifar_with(c, _global("numpy.evilsub", "dtype"), "batches.meta"))[1],
    "_codecs.encode with another codec": lambda c: _cifar_with(c, b"c_codecs\nencode\n(S'x'\nS'zlib'\ntR."),
    "numpy.dtype of nonsense": lambda c: _cifar_with(c, b"cnumpy\ndtype\n(S'nonsense'\ntR."),
    "ndarray of 10^13 elements": lambda c: _cifar_with(c, b"cnumpy\nndarray\n((I10000000000000\nttR."),
    "truncated pickle": lambda c: _cifar_with(c, _pickled(_cifar_dict())[:40]),
    "not a dict": lambda c: _cifar_with(c, _pickled([1, 2, 3])),
    "object array as data": lambda c: _cifar_with(c, pickle.dumps(_cifar_dict(data=np.array([[1] * 3072] * 2, object)))),
    "text as data": lambda c: _cifar_with(c, _pickled(_cifar_dict(data="pixels"))),
    "float labels": lambda c: _cifar_with(c, _pickled(_cifar_dict(labels=[0.5, 1.5]))),
    "labels beyond int64": lambda c: _cifar_with(c, _pickled(_cifar_dict(labels=[2 ** 70, 0]))),
    "class names that are numbers": lambda c: _cifar_with(c, _pickled({"label_names": [1, 2, 3]}), "batches.meta"),
    "cifar100 meta without fine names": lambda c: (
        write_cifar100(c.tmp), c.file("cifar-100-python/meta", _pickled({"coarse_label_names": ["a", "b"]})),
        ["data", "info", "cifar100", "--data-dir", str(c.tmp)])[2],
}


def _idx(c: Case, dims: tuple, data: bytes = b"", magic_dims: int | None = None):
    folder = c.tmp / "fm"
    folder.mkdir(exist_ok=True)
    header = bytes([0, 0, 8, magic_dims or len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(header + data))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 0)))
    return ["train", "--data", "fashion-mnist", "--data-dir", str(folder), "--out", str(c.tmp / "out"), *FAST]


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def _imagefolder(c: Case, **kwargs):
    root = write_image_folder(c.tmp / "images", **kwargs)
    return root, ["train", "--data", "imagefolder", "--data-dir", str(root), "--epochs", "1", "--out",
                  str(c.tmp / "out"), *FAST]


def _bomb_png(c: Case):
    root, argv = _imagefolder(c)
    (root / "train" / "cat" / "bomb.png").write_bytes(_png_header(30000, 30000))
    return argv


def _tiny_imagenet(c: Case, annotations: str):
    folder = c.tmp / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    for wnid in ("n01", "n02"):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "train" / wnid / "images" / "a.JPEG")
    (folder / "wnids.txt").write_text("n01\nn02\n")
    (folder / "val" / "val_annotations.txt").write_text(annotations)
    return ["data", "info", "tinyimagenet", "--data-dir", str(c.tmp)]


DATASET_CASES.update({
    "IDX with 0 images": lambda c: _idx(c, (0, 28, 28)),
    "IDX dimensions whose product overflows int64": lambda c: _idx(c, (2 ** 32 - 1, 2 ** 32 - 1, 2 ** 32 - 1)),
    "IDX with a wrong number of dimensions": lambda c: _idx(c, (1, 28), magic_dims=3),
    "PNG that claims 30000x30000 pixels": _bomb_png,
    "image folder with one class": lambda c: _imagefolder(c, classes=("cat",))[1],
    "Tiny ImageNet with an empty annotation file": lambda c: _tiny_imagenet(c, ""),
    "Tiny ImageNet annotation naming an unknown class": lambda c: _tiny_imagenet(c, "a.JPEG\tn99\t0\t0\t1\t1\n"),
})


# ---- 2. results that would silently be wrong -----------------------------------------------------

def _held(c: Case):
    run = c.run()
    lock = RunDir(run).lock()
    lock.__enter__()
    c.monkeypatch.setattr(Case, "release", lock, raising=False)
    (run / "final.json").unlink()  # an unfinished run that another process is training
    return ["train", "--data", "digits", "--epochs", "1", "--out", str(run), "--resume", *FAST]


def _unfinished(c: Case) -> Path:
    run = c.run()
    (run / "final.json").unlink()
    (run / "model.pt").unlink()
    return run


def _middle_line(c: Case):
    run = _unfinished(c)
    c.file("run/metrics.jsonl", '{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    return ["train", "--out", str(run), "--resume", "--quiet"]


RESULT_CASES = {
    "a second training into a run being trained": _held,
    "--resume with a flag that contradicts the saved config": lambda c: [
        "train", "--out", str(_unfinished(c)), "--resume", "--lr", "0.5", "--quiet"],
    "--resume with a --set that contradicts the saved config": lambda c: [
        "train", "--out", str(_unfinished(c)), "--resume", "--set", "model.similarity=cosine", "--quiet"],
    "a damaged line in the middle of metrics.jsonl": _middle_line,
    "--overwrite with data that is not there keeps the old run": lambda c: [
        "train", "--out", str(c.run()), "--overwrite", "--data", "imagefolder", "--data-dir", str(c.tmp / "none"), *FAST],
    "a refused --resume keeps the analysis": lambda c: (
        _unfinished(c), c.file("run/analysis/analysis.json", "{}"), c.file("run/evaluation.json", "{}"),
        ["train", "--out", str(c.tmp / "run"), "--resume", "--epochs", "7", "--quiet"])[3],
    "validation fraction that leaves no training images": lambda c: [
        "train", "--data", "digits", "--set", "data.val_fraction=0.999", "--out", str(c.tmp / "out"), *FAST],
    "sweep --seeds -3": lambda c: ["sweep", str(c.file("e.yaml", "grid: {train.lr: [0.1]}\n")), "--seeds", "-3",
                                   "--out", str(c.tmp / "sweep")],
    "sweep --seeds 0": lambda c: ["sweep", str(c.file("e.yaml", "grid: {train.lr: [0.1]}\n")), "--seeds", "0",
                                  "--out", str(c.tmp / "sweep")],
}


# ---- 3. resource exhaustion ----------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 10)}]\n" for k in range(9))


FLOW_BOMB = "[&a [1,1,1,1,1,1,1,1,1,1], " + ", ".join(
    f"&{chr(98 + k)} [{','.join([f'*{chr(97 + k)}'] * 10)}]" for k in range(8)) + "]"  # 10^9 values


def _train_config(c: Case, text, name="c.yaml"):
    return ["train", "--config", str(c.file(name, text)), "--out", str(c.tmp / "out"), *FAST]


RESOURCE_CASES = {
    "YAML alias bomb in --config": lambda c: _train_config(c, BOMB + "seed: *j\n"),
    "YAML alias bomb as a config value": lambda c: _train_config(c, f"train:\n  lr: {FLOW_BOMB}\n"),
    "YAML alias bomb in --set": lambda c: [
        "train", "--set", f"train.lr={FLOW_BOMB}", "--out", str(c.tmp / "out"), *FAST],
    "YAML alias bomb in an experiment file": lambda c: ["sweep", str(c.file("e.yaml", BOMB + "grid: {train.lr: *j}\n")),
                                                         "--out", str(c.tmp / "sweep")],
    "YAML alias bomb in a run's config.yaml": lambda c: (
        _unfinished(c), c.file("run/config.yaml", BOMB + "seed: *j\n"),
        ["train", "--out", str(c.tmp / "run"), "--resume", "--quiet"])[2],
    "--config /dev/zero": lambda c: ["train", "--config", "/dev/zero", "--out", str(c.tmp / "out"), *FAST],
    "--config of 20 MB": lambda c: _train_config(c, "# " + "x" * (20 << 20) + "\n"),
    "YAML nested 10000 levels": lambda c: _train_config(c, "seed: " + "[" * 10000 + "]" * 10000 + "\n"),
    "JSON nested 100000 levels in final.json": lambda c: (
        c.run(), c.file("run/final.json", "[" * 100000 + "]" * 100000), ["report", str(c.tmp)])[2],
    "a 1 MB value in --set": lambda c: ["train", "--set", "data.name=" + "x" * (1 << 20), "--out", str(c.tmp / "o"),
                                        *FAST],
}


# ---- 4. unwritable places ------------------------------------------------------------------------

WRITE_CASES = {
    "--out below a file": lambda c: ["train", "--data", "digits", "--out", str(c.file("afile", "x") / "run"), *FAST],
    "--out with a 300-character name": lambda c: ["train", "--data", "digits", "--out", str(c.tmp / ("r" * 300)),
                                                  *FAST],
    "analysis folder is a file": lambda c: (c.run(), c.file("run/analysis", "not a folder"),
                                            ["analyze", str(c.tmp / "run"), "--device", "cpu"])[2],
    "report.md is a folder": lambda c: (c.run("sweep/run"), (c.tmp / "sweep" / "report.md").mkdir(),
                                        ["report", str(c.tmp / "sweep")])[2],
    "download target is a file": lambda c: ["data", "download", "cifar10", "--data-dir", str(c.file("f", "x"))],
}


# ---- 6. values and files that used to end in a traceback -----------------------------------------

def _train_set(c: Case, *sets):
    return ["train", "--data", "digits", *[f"--set={s}" for s in sets], "--out", str(c.tmp / "out"), *FAST]


def _report_with(c: Case, name: str, content: str):
    c.run("sweep/run")
    c.file(f"sweep/{name}", content)
    return ["report", str(c.tmp / "sweep")]


def _sweep_file(c: Case, text: str):
    return ["sweep", str(c.file("e.yaml", text)), "--out", str(c.tmp / "sweep"), "--dry-run"]


def _with_run_file(c: Case, name: str, content, command=("eval",)):
    run = c.run()
    if isinstance(content, dict | list):
        torch.save(content, run / name)
    else:
        (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return [command[0], str(run), *command[1:]]


def _resume_with(c: Case, name: str, content):
    _unfinished(c)
    c.file(f"run/{name}", content)
    return ["train", "--out", str(c.tmp / "run"), "--resume", "--quiet"]


def _compare_with_matrices(c: Case, matrices) -> list:
    """A run with a well-formed analysis.json and the given analysis/matrices.pt, then compare."""
    from fixedhead.evaluation.analysis import SUMMARY_KEYS

    c.run()
    record = {"split": "test", "classes": [str(k) for k in range(10)], **dict.fromkeys(SUMMARY_KEYS, 0.5)}
    c.file("run/analysis/analysis.json", json.dumps(record))
    path = c.tmp / "run" / "analysis" / "matrices.pt"
    path.write_bytes(matrices) if isinstance(matrices, bytes) else torch.save(matrices, path)
    return ["compare", str(c.tmp / "run"), "--device", "cpu"]


def _old_analysis(c: Case) -> list:
    """analysis.json as fixedhead wrote it before matrices.pt: the C x C matrices inline (37 MB at 1,000
    classes), larger than any record is read."""
    c.run()
    c.file("run/analysis/analysis.json", json.dumps({"split": "test", "confusion": [[0] * 1200] * 1800}))
    return ["compare", str(c.tmp / "run"), "--device", "cpu"]


def test_an_old_inline_analysis_says_to_analyze_again(tmp_path):
    from fixedhead.errors import UserError

    run = RunDir(tmp_path)
    run.analysis_dir.mkdir()
    run.analysis_path.write_text(json.dumps({"confusion": [[0] * 1200] * 1800}))
    with pytest.raises(UserError, match=re.escape(f"run 'fixedhead analyze {tmp_path}' again")):
        run.read_analysis()
    run.analysis_path.write_text('{"torn')  # a small damaged one keeps its own message
    with pytest.raises(UserError, match="(?i)json") as error:
        run.read_analysis()
    assert "analyze" not in str(error.value)


def _wrong_shape_checkpoint(c: Case):
    run = _unfinished(c)
    checkpoint = torch.load(c.trained / "checkpoint.pt", weights_only=True)
    checkpoint["model"] = {k: torch.zeros(3) for k in checkpoint["model"]}
    checkpoint["epoch"] = 0
    torch.save(checkpoint, run / "checkpoint.pt")
    return ["train", "--out", str(run), "--resume", "--quiet"]


def _rgb_folder_for_grey_run(c: Case):
    write_image_folder(c.tmp / "colour", classes=("0", "1"), splits=("test",), size=16)
    return ["robustness", str(c.run()), "--corruptions", "none", "--generalization", f"folder:{c.tmp / 'colour' / 'test'}",
            "--device", "cpu"]


def _offline(c: Case, argv):
    import urllib.error
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline (no network in this test)")

    c.monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return argv


VALUE_CASES = {
    "lr .inf": lambda c: _train_set(c, "train.lr=.inf"),
    "lr 1e300": lambda c: _train_set(c, "train.lr=1e300"),
    "lr .nan": lambda c: _train_set(c, "train.lr=.nan"),
    "weight decay .inf": lambda c: _train_set(c, "train.weight_decay=.inf"),
    "seed 10^30": lambda c: _train_set(c, f"seed={10 ** 30}"),
    "--seed beyond 2^31": lambda c: ["train", "--data", "digits", "--seed", str(2 ** 40), "--out", str(c.tmp / "o"), *FAST],
    "epochs 1e400": lambda c: _train_set(c, "train.epochs=1e400"),
    "float field given 10^400": lambda c: _train_set(c, f"train.lr={10 ** 400}"),
    "feature size 1e10": lambda c: _train_set(c, "model.num_features=10000000000"),
    "images of 100000 pixels a side": lambda c: _train_set(c, "data.image_size=100000"),
    "batch size 10^12": lambda c: _train_set(c, f"train.batch_size={10 ** 12}"),
    "cosine scale 1e308": lambda c: _train_set(c, "model.similarity=cosine", "model.scale=1e308"),
    "images too small for the authors' 4x4 pool": lambda c: _train_set(c, "model.arch=resnet18", "model.pool=authors"),
    "device tpu": lambda c: ["train", "--data", "digits", "--device", "tpu", "--out", str(c.tmp / "o"), *FAST],
    "device meta": lambda c: ["train", "--data", "digits", "--device", "meta", "--out", str(c.tmp / "o"), *FAST],
    "device cuda:10^20": lambda c: ["eval", str(c.run()), "--device", f"cuda:{10 ** 20}"],
    "config file that is not UTF-8": lambda c: _train_config(c, b"seed: \xff\xfe\x00\n"),
    "config file that is a folder": lambda c: ["train", "--config", str(c.tmp), "--out", str(c.tmp / "o"), *FAST],
    "config file holding a list": lambda c: _train_config(c, "- 1\n- 2\n"),
    "config with an unknown section": lambda c: _train_config(c, "optimiser: {lr: 1}\n"),
    "final.json that is a list": lambda c: _report_with(c, "run/final.json", "[]"),
    "final.json without status": lambda c: _report_with(c, "run/final.json", '{"test_acc": 0.5}'),
    "final.json with a text accuracy": lambda c: _report_with(
        c, "run/final.json", '{"status": "finished", "test_acc": "high", "epochs": 1, "seed": 0}'),
    "config.yaml that is not a mapping": lambda c: _resume_with(c, "config.yaml", "just text\n"),
    "config.yaml with an unknown key": lambda c: _resume_with(c, "config.yaml", "model: {depth: 3}\n"),
    "config.yaml with a bad value": lambda c: _resume_with(c, "config.yaml", "train: {lr: -1}\n"),
    "metrics.jsonl line that is not a record": lambda c: _resume_with(c, "metrics.jsonl", '[1]\n{"epoch": 1}\n'),
    "checkpoint of random bytes": lambda c: _resume_with(c, "checkpoint.pt", b"PK\x03\x04 torn"),
    "model.pt of random bytes": lambda c: _with_run_file(c, "model.pt", b"\x00garbage" * 100),
    "model.pt holding a list": lambda c: _with_run_file(c, "model.pt", [1, 2, 3]),
    "model.pt without class names": lambda c: _with_run_file(c, "model.pt", {"model": {}, "config": {}}),
    "model.pt with weights of the wrong shape": lambda c: _with_run_file(
        c, "model.pt", {**torch.load(c.trained / "model.pt", weights_only=True), "model": {"head.weight": torch.zeros(2)}}),
    "checkpoint of the wrong shape on --resume": _wrong_shape_checkpoint,
    "torn analysis.json in compare": lambda c: (c.run(), c.file("run/analysis/analysis.json", '{"split": "test", "acc'),
                                                ["compare", str(c.tmp / "run"), "--device", "cpu"])[2],
    "analysis.json missing its numbers": lambda c: (c.run(), c.file("run/analysis/analysis.json", '{"split": "test"}'),
                                                    ["compare", str(c.tmp / "run"), "--device", "cpu"])[2],
    "analysis.json of an older fixedhead (matrices inline, over 4 MiB)": lambda c: _old_analysis(c),
    "matrices.pt of the wrong shape in compare": lambda c: _compare_with_matrices(c, {
        "class_vector_cosine": torch.zeros(2, 2), "confusion": torch.zeros(10, 10)}),
    "matrices.pt of random bytes in compare": lambda c: _compare_with_matrices(c, b"PK\x03\x04 torn"),
    "evaluation.json missing keys": lambda c: _report_with(c, "run/evaluation.json", '{"clean_acc": 0.5}'),
    "invalid experiment.yaml in a sweep folder": lambda c: _report_with(c, "experiment.yaml", "grid: [1, 2]\n"),
    "experiment grid that is a number": lambda c: _sweep_file(c, "grid: 5\n"),
    "experiment variants that are a list": lambda c: _sweep_file(c, "variants: [1, 2]\n"),
    "experiment variant that is text": lambda c: _sweep_file(c, "variants: {a: text}\n"),
    "experiment seeds in words": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nseeds: many\n"),
    "experiment after that is text": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nafter: analyze\n"),
    "experiment robustness section that is text": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nrobustness: all\n"),
    "experiment after that is a number": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nafter: 3\n"),
    "experiment with the old word evaluate": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nafter: [evaluate]\n"),
    "the old command name eval": lambda c: ["eval", str(c.run())],
    "the old command name evaluate": lambda c: ["evaluate", str(c.run())],
    "experiment report rows that are a number": lambda c: _sweep_file(c, "grid: {train.lr: [0.1]}\nreport: {rows: 3}\n"),
    "experiment that is a list": lambda c: _sweep_file(c, "- grid\n"),
    "experiment whose base_from names itself": lambda c: _sweep_file(c, "base_from: e.yaml\ngrid: {train.lr: [0.1]}\n"),
    "experiment whose base_from is missing": lambda c: _sweep_file(c, "base_from: nowhere.yaml\ngrid: {train.lr: [0.1]}\n"),
    "experiment whose base_from climbs out of the shipped files": lambda c: _sweep_file(
        c, "base_from: configs/../../../etc/passwd\ngrid: {train.lr: [0.1]}\n"),
    "experiment whose base_from is a list": lambda c: _sweep_file(c, "base_from: [a.yaml]\ngrid: {train.lr: [0.1]}\n"),
    "colour images for a grey run": _rgb_folder_for_grey_run,
    "offline Fashion-MNIST download": lambda c: _offline(c, ["data", "download", "fashion-mnist", "--data-dir",
                                                            str(c.tmp / "new" / "dl")]),
}

CASES = {**DATASET_CASES, **RESULT_CASES, **RESOURCE_CASES, **WRITE_CASES, **VALUE_CASES}


def _snapshot(root: Path) -> dict:
    """path -> (kind, content hash, mode) of everything under root but the test's cache."""
    found = {}
    for path in sorted(root.rglob("*")):
        if "cache" in path.relative_to(root).parts[:1]:
            continue
        if path.is_file() and not path.is_symlink():
            found[path] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mode)
        else:
            found[path] = ("other", None, path.lstat().st_mode)
    return found


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(name, tmp_path, trained_run, monkeypatch, capsys):
    case = Case(tmp_path, trained_run, monkeypatch)
    argv = CASES[name](case)
    modules_before = set(sys.modules)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    finally:
        release = getattr(Case, "release", None)
        if release is not None:
            release.__exit__(None, None, None)
            monkeypatch.delattr(Case, "release")
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert err.startswith("fixedhead: error: ") and err.count("\n") == 1, err[-2000:]
    assert "Traceback" not in err and len(err) < 2500
    assert not (tmp_path / PAYLOAD).exists(), "a payload ran"
    assert not {m for m in set(sys.modules) - modules_before if "evil" in m}, "a payload module was imported"
    after = _snapshot(tmp_path)
    changed = [str(p) for p, state in before.items() if after.get(p) != state]
    assert not changed, f"changed or removed: {changed}"


@pytest.mark.parametrize("name", ["numpy submodule that runs code on import", "YAML alias bomb in --config",
                                  "model.pt of random bytes"])
def test_as_a_real_process_too(name, tmp_path, trained_run, monkeypatch):
    """The console script's own exit code and stderr, for a few of the cases."""
    case = Case(tmp_path, trained_run, monkeypatch)
    argv = CASES[name](case)
    if name.startswith("numpy submodule"):  # a real process cannot see the monkeypatched numpy path: use PYTHONPATH
        shutil.copy(tmp_path / "modules" / "evilsub.py", tmp_path / "modules" / "numpy_evilsub.py")
        (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(_global("numpy_evilsub", "x"))
    env = {"PYTHONPATH": str(tmp_path / "modules"), "FIXEDHEAD_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "fixedhead", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / PAYLOAD).exists()


def test_a_genuine_bug_still_shows_its_traceback(monkeypatch):
    import fixedhead.cli as cli

    monkeypatch.setitem(cli.COMMANDS, "report", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["report", "anywhere"])


def test_bytes_class_names_and_numpy_2_pickles_are_read(tmp_path):
    """Odd but genuine contents are read, not refused: bytes class names (encoding='bytes' era pickles)
    and arrays pickled by this numpy (whatever module path it writes)."""
    from fixedhead import data

    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{k}".encode() for k in range(10)]}))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_dict(labels=np.array([3, 4])), protocol=5))
    test = data.load("cifar10", tmp_path, "test")
    assert test.classes[3] == "c3" and test.labels.tolist() == [3, 4]


def test_json_records_are_checked_before_use(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "final.json").write_text(json.dumps({"status": "finished"}))
    from fixedhead.errors import UserError

    with pytest.raises(UserError, match="'test_acc' must be"):
        run.is_finished()


def test_an_offline_download_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    argv = _offline(Case(tmp_path, None, monkeypatch), ["data", "download", "mnist", "--data-dir",
                                                        str(tmp_path / "new" / "dl")])
    (tmp_path / "kept").mkdir()
    assert main(argv) == 2
    assert "cannot download mnist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["kept"]
