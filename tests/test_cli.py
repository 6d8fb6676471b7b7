import json
import subprocess
import sys

import pytest

from conftest import write_image_folder
from fixedhead.cli import main
from tiny import TINY_FLAGS

FAST = TINY_FLAGS[2:]  # the tiny run's flags after --data digits


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_eval_end_to_end_in_a_real_process(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "fixedhead", "train", "--data", "digits", "--similarity", "cosine", "--fixed",
           "--epochs", "2", "--out", str(out), *FAST]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
    final = json.loads((out / "final.json").read_text())
    done = subprocess.run([sys.executable, "-m", "fixedhead", "score", str(out), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["acc"] == pytest.approx(final["test_acc"], abs=1e-12)


def test_config_file_and_set_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {similarity: cosine, scale: 4}\ntrain: {epochs: 5}\n")
    code, _, err = run_cli(capsys, "train", "--config", cfg, "--epochs", "1", "--set", "model.init=simplex",
                           "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "scale: 4.0" in saved and "epochs: 1" in saved and "init: simplex" in saved


@pytest.mark.parametrize("args,saved", [(["--bf16"], "bf16: true"), (["--bf16", "auto"], "bf16: auto"),
                                        (["--bf16", "false"], "bf16: false"), ([], "bf16: false")])
def test_the_bf16_flag_says_true_false_or_auto(tmp_path, capsys, args, saved):
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--epochs", "0", "--out", tmp_path / "r", *FAST, *args)
    assert code == 0, err
    assert f"  {saved}" in (tmp_path / "r" / "config.yaml").read_text().splitlines()  # under train:


@pytest.mark.parametrize("args,message", [
    (["--data", "imagenet"], "unknown dataset 'imagenet' (data.name); choose one of: digits, imagefolder"),
    (["--arch", "resnet1000"], "unknown arch 'resnet1000' (model.arch); choose one of: resnet18"),
    (["--init", "xavier"], "choose one of: random, uniform-int, orthogonal, hadamard, simplex"),
    (["--similarity", "euclid"], "choose one of: dot, cosine"),
    (["--similarity", "cosine", "--scale", "0"], "model.scale must be a number in (0, 10_000], got 0.0"),
    (["--epochs", "-1"], "train.epochs must be a number in [0, 100_000] (a fraction ends the last epoch early), got -1.0"),
    (["--epochs", "two"], "argument --epochs: invalid float value: 'two'"),
    (["--data", "imagefolder"], "needs --data-dir"),
    (["--data", "imagefolder", "--data-dir", "/nonexistent/x"], "data folder /nonexistent/x does not exist"),
    (["--set", "train.momentum=2"], "train.momentum must be a number in [0, 1)"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--bf16", "sometimes"], "train.bf16 must be true or false or auto, got 'sometimes'"),
    (["--set", "data.crop_padding_mode=mirror"], "(data.crop_padding_mode); choose one of: zeros, reflect"),
    (["--set", "data.crop_padding_mode=reflect", "--set", "data.crop_padding=16"],
     "data.crop_padding must be below the image side (16 px), got 16"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "r", *FAST, *args)
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "final.json").exists()


def test_refuses_to_clobber_a_finished_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli(capsys, "train", "--epochs", "1", "--out", out, *FAST)[0] == 0
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "train", "--epochs", "1", "--out", out, *FAST)
    assert code == 2 and "already holds a run trained to its end" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert run_cli(capsys, "train", "--epochs", "1", "--out", out, "--overwrite", *FAST)[0] == 0


def test_checkpoint_class_count_mismatch(tmp_path, capsys):
    three = write_image_folder(tmp_path / "three")
    code, _, err = run_cli(capsys, "train", "--data", "imagefolder", "--data-dir", three, "--epochs", "1",
                           "--out", tmp_path / "r", *FAST)
    assert code == 0, err
    two = write_image_folder(tmp_path / "two", classes=("cat", "dog"))
    code, _, err = run_cli(capsys, "score", tmp_path / "r", "--data-dir", two)
    assert code == 2 and "has 2 classes and the run 3" in err and "'owl' in the run" in err


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, "score", tmp_path)
    assert code == 2 and "model.pt does not exist" in err


def test_demo_with_one_epoch(tmp_path, capsys):
    code, out, err = run_cli(capsys, "demo", "--data", "digits", "--out", tmp_path / "demo", "--set", "train.epochs=1",
                             "--set", "model.arch=fastnet-small")
    assert code == 0, err
    for name in ("dot-learned", "dot-fixed", "cosine-learned", "cosine-fixed"):
        assert f"| {name} |" in out
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary["results"]) == {"dot-learned", "dot-fixed", "cosine-learned", "cosine-fixed"}
    assert "held here" in out or "did not hold here" in out
    assert (tmp_path / "demo" / "demo.md").read_text().count("| ") >= 5
    assert (tmp_path / "demo" / "class_vector_cosine.png").stat().st_size > 1000
    code, _, err = run_cli(capsys, "demo", "--data", "digits", "--out", tmp_path / "demo", "--set", "train.epochs=1",
                           "--set", "model.arch=fastnet-small")
    assert code == 0 and "reusing" in err


def test_data_info_and_offline_download(tmp_path, capsys):
    from formats import write_stl10

    write_stl10(tmp_path)
    code, out, err = run_cli(capsys, "data", "info", "stl10", "--data-dir", tmp_path)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["splits"] == {"train": 3, "test": 3} and summary["image_size"] == [3, 96, 96]
    assert summary["num_classes"] == 10 and len(summary["mean"]) == 3
    code, _, err = run_cli(capsys, "data", "info", "cifar10", "--data-dir", tmp_path)
    assert code == 2 and "missing file" in err and "fixedhead data download cifar10" in err
    code, _, err = run_cli(capsys, "data", "download", "imagenet21k", "--data-dir", tmp_path)
    assert code == 2 and "downloadable: cifar10, cifar100, stl10, tinyimagenet, cifar10.1" in err


def test_download_failure_is_one_line(tmp_path, capsys, monkeypatch):
    import urllib.error

    from fixedhead.data import download as download_mod

    def offline(root):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setitem(download_mod.DOWNLOADERS, "cifar10", offline)
    code, _, err = run_cli(capsys, "data", "download", "cifar10", "--data-dir", tmp_path / "d")
    assert code == 2 and err.count("\n") == 1 and "cannot download cifar10" in err


def test_a_run_written_by_another_version_is_one_line_naming_it(tmp_path, capsys, tiny_run):
    """A run folder whose config this version cannot read (a key renamed before the redesign) is refused by
    --resume in one line that names the version meta.json records."""
    import shutil

    import yaml

    out = shutil.copytree(tiny_run, tmp_path / "r")
    old = yaml.safe_load((out / "config.yaml").read_text())
    old["model"]["head"] = old["model"].pop("similarity")
    (out / "config.yaml").write_text(yaml.safe_dump(old))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "fixedhead": "0.0.9"}))
    (out / "final.json").unlink()
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "fixedhead 0.0.9" in err and "model.head" in err, err


@pytest.mark.parametrize("status, said", [("diverged", "the run diverged (training loss non-finite, or higher"),
                                          ("at_chance", "the run ended at chance (training loss fell but")])
def test_train_says_when_the_run_did_not_train(tmp_path, capsys, monkeypatch, status, said):
    import fixedhead.training.fit as train_module

    monkeypatch.setattr(train_module, "outcome", lambda *args: status)  # as if the loss had blown up / stalled
    code, _, err = run_cli(capsys, "train", "--data", "digits", "--epochs", "1", "--out", tmp_path / "r", *FAST)
    assert code == 0 and said in err and "over the last quarter" in err, err
    assert json.loads((tmp_path / "r" / "final.json").read_text())["status"] == status


def test_an_interrupted_demo_continues_when_run_again(tmp_path, capsys, monkeypatch):
    from fixedhead.config import make_config
    from fixedhead.experiments.experiment_file import load_experiment
    from fixedhead.experiments.sweep import expand
    from interrupts import fit_interrupted

    args = ["--set", "train.epochs=2", "--set", "model.arch=fastnet-small"]
    experiment = load_experiment("demo/digits", [0], {"train.epochs": "2", "model.arch": "fastnet-small"})
    run = next(r for r in expand(experiment) if r.variant == "dot-learned")
    config = make_config(experiment["base"], run.overrides)
    fit_interrupted(config, tmp_path / "demo" / run.name, 1, monkeypatch)  # as Ctrl-C in the second epoch
    code, out, err = run_cli(capsys, "demo", "--data", "digits", "--out", tmp_path / "demo", *args)
    assert code == 0, err
    assert "| dot-learned |" in out


def test_config_takes_a_recipe_of_one_run_by_path_or_shipped_name(tmp_path, capsys):
    """train --config reads an experiment file of one run (its base and variant) as sweep names them; an
    experiment of several runs is refused in one line that points to sweep."""
    import yaml

    from fixedhead.cli import _config_file

    assert _config_file("speed/cpu-fast")["model.arch"] == "airnet"
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump({"base": {"data.name": "digits", "model.arch": "fastnet-small",
                                               "train.batch_size": 128}, "variants": {"only": {"model.fixed": True}}}))
    code, _, err = run_cli(capsys, "train", "--config", recipe, "--epochs", "1", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]["fixed"] is True
    code, _, err = run_cli(capsys, "train", "--config", "demo/digits", "--out", tmp_path / "r2")
    assert code == 2 and "describes several runs" in err and "fixedhead sweep demo/digits" in err
