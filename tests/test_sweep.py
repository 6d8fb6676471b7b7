import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

import fixedhead
from fixedhead.cli import main
from fixedhead.errors import UserError
from fixedhead.experiments.experiment_file import load_experiment
from fixedhead.experiments.report import write_report
from fixedhead.experiments.statistics import difference_ci
from fixedhead.experiments.sweep import expand, parse_shard, run_sweep, shard

EXPERIMENT = {
    "name": "t",
    "base": {"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 2, "train.batch_size": 128},
    "variants": {"dot-learned": {"model.similarity": "dot"}, "dot-fixed": {"model.similarity": "dot", "model.fixed": True}},
    "grid": {"train.lr": [0.05, 0.1]},
    "seeds": 2,
}


def write(tmp_path, experiment, name="e.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_grid_expansion_and_names(tmp_path):
    runs = expand(load_experiment(write(tmp_path, EXPERIMENT)))
    names = [r.name for r in runs]
    assert len(runs) == 2 * 2 * 2 and names == sorted(names) and len(set(names)) == 8
    assert "dot-fixed__lr=0.05__seed=1" in names
    run = next(r for r in runs if r.name == "dot-fixed__lr=0.1__seed=0")
    assert run.overrides == {"model.similarity": "dot", "model.fixed": True, "train.lr": 0.1, "seed": 0}
    assert names == [r.name for r in expand(load_experiment(write(tmp_path, EXPERIMENT, "again.yaml")))]
    assert len(expand(load_experiment(write(tmp_path, EXPERIMENT), seeds=3))) == 12


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 9])
def test_shards_are_disjoint_and_complete(tmp_path, count):
    runs = expand(load_experiment(write(tmp_path, EXPERIMENT)))
    parts = [shard(runs, i, count) for i in range(1, count + 1)]
    names = [r.name for part in parts for r in part]
    assert sorted(names) == sorted(r.name for r in runs) and len(names) == len(set(names))


@pytest.mark.parametrize("change,match", [
    ({"gird": {"train.lr": [0.1]}}, "unknown key 'gird'"),
    ({"grid": {}, "variants": None}, "the grid is empty"),
    ({"grid": {"train.lr": []}}, "non-empty lists"),
    ({"grid": {"train.lrr": [0.1]}}, "unknown config key 'train.lrr'"),
    ({"seeds": 0}, "seeds must be a count in 1..10000"),
    ({"after": ["plot"]}, "unknown step 'plot'"),
])
def test_bad_experiment_files(tmp_path, change, match):
    experiment = {**EXPERIMENT, **change}
    with pytest.raises(UserError, match=match):
        expand(load_experiment(write(tmp_path, {k: v for k, v in experiment.items() if v is not None})))


@pytest.mark.parametrize("spec", ["3/2", "0/2", "1", "a/b", "2/0"])
def test_bad_shard_specs(spec):
    with pytest.raises(UserError, match="--shard takes i/n"):
        parse_shard(spec)


def test_cli_dry_run_and_bad_shard(tmp_path, capsys):
    path = write(tmp_path, EXPERIMENT)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run", "--shard", "2/3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 runs planned" and len(out) == 4 and not (tmp_path / "o").exists()
    expected = shard(expand(load_experiment(path)), *parse_shard("2/3"))
    assert [line.split()[0] for line in out[:-1]] == [r.name for r in expected]
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--shard", "3/2"]) == 2
    assert "--shard takes i/n" in capsys.readouterr().err


def test_report_of_a_folder_without_finished_runs(tmp_path, capsys):
    (tmp_path / "r" / "run1").mkdir(parents=True)
    (tmp_path / "r" / "run1" / "config.yaml").write_text("seed: 0\n")
    assert main(["report", str(tmp_path / "r")]) == 2
    assert "holds no finished runs" in capsys.readouterr().err


def fixture_run(root, name, variant, dataset, seed, acc, status="finished"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "data": {"name": dataset}}))
    (folder / "final.json").write_text(json.dumps({"status": status, "test_acc": acc, "seed": seed}))
    (folder / "sweep.json").write_text(json.dumps({"variant": variant}))
    (folder / "meta.json").write_text(json.dumps({"fixedhead": "test", "seed": seed}))  # the marker of a run


def test_report_tables_against_numpy_and_scipy(tmp_path):
    accs = {("fixed", "a"): [0.91, 0.93, 0.92], ("learned", "a"): [0.88, 0.90, 0.85], ("fixed", "b"): [0.5]}
    for (variant, dataset), values in accs.items():
        for k, acc in enumerate(values):  # other seeds on the two sides: not paired, so Welch's interval
            seed = k + 3 * (variant == "learned")
            fixture_run(tmp_path, f"{variant}-{dataset}-{seed}", variant, dataset, seed, acc)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "fx", "grid": {"data.name": ["a", "b"]},
                                                              "variants": {"fixed": {}, "learned": {}},
                                                              "report": {"compare": [["fixed", "learned"]]}}))
    result = write_report(tmp_path)
    table = result["tables"][0]
    cell = table["cells"]["a"]["fixed"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(np.mean(accs[("fixed", "a")]))
    assert cell["std"] == pytest.approx(np.std(accs[("fixed", "a")], ddof=1))
    assert np.isnan(table["cells"]["b"]["fixed"]["std"]) and table["cells"]["b"]["fixed"]["n"] == 1
    welch = stats.ttest_ind(accs[("fixed", "a")], accs[("learned", "a")], equal_var=False)
    ci = welch.confidence_interval(0.95)
    d = table["diffs"]["fixed - learned"]["a"]
    assert (d["low"], d["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    text = (tmp_path / "report.md").read_text()
    assert "92.00 ± 1.00 (n=3)" in text and "| b | 50.00 (n=1) | - |" in text
    assert (tmp_path / "results.csv").read_text().count("\n") == 8
    assert r"\begin{tabular}" in (tmp_path / "tables.tex").read_text()
    assert (tmp_path / "figure_test_acc.png").stat().st_size > 1000


def test_runs_that_share_seeds_are_paired_and_judged_against_the_margin(tmp_path):
    fixed, learned = [0.91, 0.93, 0.92, 0.90], [0.90, 0.925, 0.905, 0.895]
    for seed, (f, lr) in enumerate(zip(fixed, learned)):
        fixture_run(tmp_path, f"fixed-{seed}", "fixed", "a", seed, f)
        fixture_run(tmp_path, f"learned-{seed}", "learned", "a", seed, lr)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({
        "name": "px", "variants": {"fixed": {}, "learned": {}},
        "report": {"compare": [["fixed", "learned", 0.01], ["learned", "fixed", 0.001]]}}))
    result = write_report(tmp_path)
    d = result["tables"][0]["diffs"]["fixed - learned"]["all"]
    ref = stats.ttest_rel(fixed, learned)
    assert d["paired"] and d["n"] == 4 and d["p"] == pytest.approx(ref.pvalue)
    assert (d["low"], d["high"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert d["verdict"] == "superior" and result["tables"][0]["diffs"]["learned - fixed"]["all"]["verdict"] == "inferior"
    text = (tmp_path / "report.md").read_text()
    assert "(paired, n = 4, p = " in text and "margin 1.00: **superior**" in text


def test_a_compare_pair_with_a_bad_margin_is_one_line(tmp_path):
    from fixedhead.experiments.experiment_file import load_experiment

    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "variants": {"a": {}, "b": {}}, "report": {"compare": [["a", "b", -1]]}}))
    with pytest.raises(UserError, match=r"\[column, column, MARGIN\]"):
        load_experiment(path)


def test_difference_ci_with_single_runs_has_no_interval():
    assert np.isnan(difference_ci([0.5], [0.4])["low"])


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    # lr 1000 at logit scale 1000: non-finite within an epoch in float32 too (at scale 1 the loss may stay finite)
    experiment = {**EXPERIMENT, "grid": None, "seeds": 1,
                  "variants": {"wild": {"train.lr": 1000, "model.scale": 1000}, "tame": {"train.lr": 0.05}},
                  "base": {**EXPERIMENT["base"], "train.epochs": 2, "train.warmup_epochs": 0}}
    path = write(tmp_path, {k: v for k, v in experiment.items() if v is not None})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 1
    assert "1 failed" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "wild__seed=0" / "failure.json").read_text())["error"].startswith(
        "training diverged")
    assert json.loads((tmp_path / "o" / "tame__seed=0" / "final.json").read_text())["status"] == "finished"


def test_killed_sweep_restarts_and_every_run_finishes_exactly_once(tmp_path):
    experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "train.epochs": 3}, "seeds": 1}
    path = write(tmp_path, experiment)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "fixedhead", "sweep", str(path), "--out", str(out)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill during the second run, after its first checkpoint
        finished = list(out.glob("*/final.json"))
        started = [p for p in out.glob("*/checkpoint.pt") if not (p.parent / "final.json").exists()]
        if finished and started:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(list(out.glob("*/final.json"))) < 4
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for run in out.iterdir():
        if run.is_dir():
            epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert epochs == [1, 2, 3], run.name
            assert json.loads((run / "final.json").read_text())["status"] == "finished"
    assert "already finished" in done.stdout and len(list(out.glob("*/final.json"))) == 4


def test_select_keeps_the_value_best_on_validation_not_test(tmp_path):
    from fixedhead.experiments.report import build_tables

    records = []
    for scale, val, test in ((1, 0.70, 0.90), (16, 0.80, 0.60)):  # S=1 is best on test, S=16 on validation
        for seed in range(2):
            records.append({"status": "finished", "data.name": "a", "variant": "v", "model.scale": scale,
                            "val_acc": val, "test_acc": test + seed / 100})
    for record in records[:]:  # a second column to compare against, with S=1 best on validation
        records.append({**record, "variant": "w", "val_acc": 1 - record["val_acc"]})
    layout = {"rows": ["data.name"], "columns": ["variant"], "metrics": ["test_acc", "model.scale"],
              "select": {"key": "model.scale", "by": "val_acc"}, "compare": [["v", "w"]]}
    tables = {t["metric"]: t for t in build_tables(records, layout)}
    assert tables["model.scale"]["cells"]["a"]["v"]["mean"] == 16
    assert tables["model.scale"]["cells"]["a"]["w"]["mean"] == 1
    assert tables["test_acc"]["cells"]["a"]["v"]["mean"] == pytest.approx(0.605)
    assert tables["test_acc"]["diffs"]["v - w"]["a"]["diff"] == pytest.approx(0.605 - 0.905)
    assert tables["model.scale"]["diffs"] == {}  # the selected value is a choice: no fixed - learned for it


def test_a_tie_on_validation_accuracy_goes_to_the_lower_validation_loss():
    """300 validation images give accuracies in steps of 1/300, so two values of S often tie: the one
    listed first must not win by its place in the run names."""
    from fixedhead.experiments.report import build_tables, selection_note

    records = [{"status": "finished", "data.name": "a", "variant": "v", "model.scale": scale, "val_acc": 295 / 300,
                "val_loss": loss, "test_acc": test} for scale, loss, test in ((16, 0.5, 0.90), (4, 0.05, 0.80))]
    records.append({**records[0], "model.scale": 64, "val_acc": 294 / 300, "val_loss": 0.01})  # lower loss, not tied
    layout = {"rows": ["data.name"], "columns": ["variant"], "metrics": ["test_acc", "model.scale"],
              "select": {"key": "model.scale", "by": "val_acc"}}
    tables = {t["metric"]: t for t in build_tables(records, layout)}
    assert tables["model.scale"]["cells"]["a"]["v"]["mean"] == 4
    assert tables["test_acc"]["cells"]["a"]["v"]["mean"] == pytest.approx(0.80)
    without_loss = [{k: v for k, v in r.items() if k != "val_loss"} for r in records]
    assert {t["metric"]: t for t in build_tables(without_loss, layout)}["model.scale"]["cells"]["a"]["v"]["mean"] == 16
    assert "a tie: the lower mean val_loss" in selection_note(layout["select"], "results.csv")
    by_loss = {**layout, "select": {"key": "model.scale", "by": "val_loss"}}  # lower is better: S=64's 0.01
    assert {t["metric"]: t for t in build_tables(records, by_loss)}["model.scale"]["cells"]["a"]["v"]["mean"] == 64


def test_select_by_a_test_metric_is_refused_by_the_sweep_and_by_the_report(tmp_path, capsys):
    """A choice made on test would be reported as 'selected on validation': refused before any run, and
    refused by the report of a folder whose experiment.yaml was edited to ask for it."""
    from fixedhead.experiments.report import build_tables

    experiment = {**EXPERIMENT, "report": {"rows": [], "columns": [], "metrics": ["test_acc"],
                                           "select": {"key": "train.lr", "by": "test_acc"}}}
    path = write(tmp_path, {k: v for k, v in experiment.items() if v is not None})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val_acc|val_loss" in err and "never on test" in err, err
    assert not (tmp_path / "o").exists()
    records = [{"status": "finished", "variant": "v", "train.lr": lr, "test_acc": acc} for lr, acc in ((0.1, 0.9), (1, 0.8))]
    with pytest.raises(UserError, match="accepted: val_acc, val_loss"):
        build_tables(records, {"rows": [], "columns": ["variant"], "metrics": ["test_acc"],
                               "select": {"key": "train.lr", "by": "test_acc"}})


def test_every_shipped_experiment_file_expands(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted([*(root / "src" / "fixedhead" / "configs").rglob("*.yaml"), *(root / "benchmarks").rglob("*.yaml")])
    assert len(files) >= 30
    for path in [p for p in files if not p.name.startswith("_")]:  # _NAME.yaml: a base other files start from
        runs = expand(load_experiment(path, sets={"data.data_dir": str(tmp_path)}))
        assert runs, path


def test_devices_run_one_worker_per_device_over_disjoint_shards(tmp_path, capsys):
    experiment = {**EXPERIMENT, "variants": None, "grid": {"train.lr": [0.05, 0.1, 0.2]}, "seeds": 1,
                  "base": {**EXPERIMENT["base"], "train.epochs": 1}}
    path = write(tmp_path, {k: v for k, v in experiment.items() if v is not None})
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--devices", "cpu,cpu"]) == 0
    assert "3 runs: 3 trained" in capsys.readouterr().out
    finals = sorted(p.parent.name for p in (tmp_path / "o").glob("*/final.json"))
    assert finals == ["lr=0.05__seed=0", "lr=0.1__seed=0", "lr=0.2__seed=0"]


def test_every_accuracy_is_shown_in_percent_and_other_metrics_are_not():
    from fixedhead.experiments.report import _fmt

    for metric in ("test_acc", "clean_acc", "impulse_noise_mean_acc", "gen_acc[cifar10.1]", "val_acc"):
        assert _fmt(metric, 0.3349) == "33.49", metric
    for metric in ("spearman_rho", "mean_cos_to_predicted", "scatter_ratio"):
        assert _fmt(metric, 0.3349) == "0.335", metric


def test_a_sweep_asking_for_bf16_on_a_cpu_that_emulates_it_says_so_once(tmp_path, monkeypatch):
    import fixedhead.devices
    import fixedhead.experiments.sweep as sweep_module
    import fixedhead.training.fit

    def no_training(config, *args, **kwargs):
        raise UserError("not trained in this test")

    monkeypatch.setattr(fixedhead.training.fit, "fit", no_training)
    for native, bf16, expected in ((False, True, 1), (False, False, 0), (True, True, 0), (False, "auto", 0)):
        monkeypatch.setattr(fixedhead.devices, "native_bf16", lambda device, native=native: native)
        lines = []
        experiment = {**EXPERIMENT, "base": {**EXPERIMENT["base"], "train.bf16": bf16, "train.device": "cpu"}}
        run_sweep(write(tmp_path, experiment), tmp_path / f"o-{native}-{bf16}", log=lines.append)
        notes = [line for line in lines if "bf16" in line]
        assert len(notes) == expected, (native, bf16, lines)
        if expected:
            assert notes[0].startswith("note: 8 of 8 run(s) to train") and "--set train.bf16=auto" in notes[0]
    out = tmp_path / "o-False-True"  # finished runs are not counted: they will not train again
    for name in sorted(p.name for p in out.iterdir() if p.is_dir())[:3]:
        (out / name / "final.json").write_text(json.dumps({"status": "finished", "test_acc": 0.5}))
    monkeypatch.setattr(fixedhead.devices, "native_bf16", lambda device: False)
    monkeypatch.setattr(sweep_module, "_stale", lambda run_dir, config: None)
    lines = []
    run_sweep(write(tmp_path, {**EXPERIMENT, "base": {**EXPERIMENT["base"], "train.bf16": True, "train.device": "cpu"}}),
              out, log=lines.append)
    assert [line for line in lines if "bf16" in line][0].startswith("note: 5 of 5 run(s) to train")


def test_a_device_the_machine_lacks_is_one_error_before_any_run(tmp_path, capsys):
    import torch

    from fixedhead.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: e\nbase: {data.name: digits, train.epochs: 1}\ngrid: {train.lr: [0.1]}\nseeds: 2\n")
    for extra in (["--set", "train.device=cuda"], ["--devices", "cuda:0,cuda:1"]):
        assert main(["sweep", str(experiment), "--out", str(tmp_path / "out"), *extra]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_a_select_key_missing_from_a_run_is_one_line_not_an_empty_table():
    from fixedhead.experiments.report import build_tables

    records = [{"run": "r0", "status": "finished", "data.name": "a", "variant": "v", "model.scale": 1.0,
                "test_acc": 0.9}]
    layout = {"rows": ["data.name"], "columns": ["variant"], "metrics": ["test_acc"],
              "select": {"key": "model.scale", "by": "val_acc"}}
    with pytest.raises(UserError, match="lack it .*r0.*data.val_fraction"):
        build_tables(records, layout)


def test_final_json_holds_the_final_weights_validation_scores_under_select_last(tmp_path):
    from fixedhead.config import make_config
    from fixedhead.data.loaders import prepare
    from fixedhead.evaluation.predict import predict, scores
    from fixedhead.evaluation.trained import load_trained
    from fixedhead.training.fit import fit

    config = make_config({"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 1,
                          "train.batch_size": 128, "data.val_fraction": 0.2})
    final = fit(config, tmp_path / "run", verbose=False)
    model = load_trained(tmp_path / "run").model
    data = prepare(config.data, seed=0, batch_size=128, eval_batch_size=1000, device="cpu")
    again = scores(predict(model, data["val"]))
    assert final["val_acc"] == again["acc"] and final["val_loss"] == pytest.approx(again["loss"])


def test_diverged_runs_are_counted_in_their_cell_and_kept_in_the_csv(tmp_path):
    for seed, status in enumerate(["finished", "finished", "diverged"]):
        fixture_run(tmp_path, f"lr-a-{seed}", "v", "a", seed, [0.9, 0.8, 0.137][seed], status)
    for seed in range(2):
        fixture_run(tmp_path, f"lr-b-{seed}", "v", "b", seed, 0.1, "diverged")
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "lr", "grid": {"data.name": ["a", "b"]},
                                                              "variants": {"v": {}}}))
    result = write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| a | 85.00 ± 7.07 (n=2) [1/3 diverged] |" in text  # the two that trained; the third counted
    assert "| b | - [2/2 diverged] |" in text
    assert "3 diverged" in text and "higher in the last epoch than in the first" in text and "ln C" in text
    assert "0 at chance" in text
    assert result["counts"]["diverged"] == 3
    csv_text = (tmp_path / "results.csv").read_text()
    assert "diverged" in csv_text and "0.137" in csv_text  # the diverged run's accuracy stays visible


def test_a_cell_pooling_runs_of_different_settings_says_which(tmp_path):
    """Runs kept from an earlier experiment file (here another train.bf16) or a grid key the layout does
    not show end up in one cell: the report names the cell and the keys instead of pooling silently."""
    for seed, (bf16, lr) in enumerate([(True, 0.1), ("auto", 0.1), (True, 0.2)]):
        fixture_run(tmp_path, f"a-{seed}", "v", "a", seed, 0.8 + seed / 100)
        config = {"seed": seed, "data": {"name": "a", "data_dir": f"/d{seed}"}, "train": {"bf16": bf16, "lr": lr}}
        (tmp_path / f"a-{seed}" / "config.yaml").write_text(yaml.safe_dump(config))
    # Cell b: the same saved config, but train.bf16 auto resolved on two machines (meta.json says how).
    for seed, meta in enumerate([{"bf16": True}, {"bf16": False}]):
        fixture_run(tmp_path, f"b-{seed}", "v", "b", seed, 0.7 - seed / 10)
        (tmp_path / f"b-{seed}" / "meta.json").write_text(json.dumps({"fixedhead": "test", **meta}))
    fixture_run(tmp_path, "c-0", "v", "c", 0, 0.7)  # cell c: one run started in bf16, resumed in float32,
    (tmp_path / "c-0" / "meta.json").write_text(json.dumps({"fixedhead": "test", "bf16": True,
                                                            "resumed": [{"epoch": 3, "bf16": False}]}))
    fixture_run(tmp_path, "c-1", "v", "c", 1, 0.6)  # and one whose meta.json says nothing
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "mix", "grid": {"data.name": ["a", "b", "c"]},
                                                              "variants": {"v": {}}}))
    write_report(tmp_path)
    lines = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("- ")]
    assert lines == ["- a | v: train.bf16 = True / auto; train.lr = 0.1 / 0.2",  # not data_dir, not seed
                     "- b | v: precision = bf16 / float32", "- c | v: precision = bf16 + float32 / not recorded"]


def test_variants_down_the_side_are_not_also_across_the_top(tmp_path):
    """report: rows: [variant] (the speed files) gives one column, not a diagonal of one cell per row."""
    for variant, acc in (("s8", 0.88), ("s16", 0.89)):
        fixture_run(tmp_path, f"{variant}-0", variant, "a", 0, acc)
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "side", "variants": {"s8": {}, "s16": {}},
                                                              "report": {"rows": ["variant"]}}))
    table = write_report(tmp_path)["tables"][0]
    assert table["columns"] == ["all"] and table["cells"]["s16"]["all"]["mean"] == pytest.approx(0.89)


def test_the_outcome_rule():
    from fixedhead.runs import outcome

    assert outcome(None) == outcome((2.3, 0.4)) == outcome((2.3, 0.4), 0.3, 10) == "finished"
    # Diverged only when the loss rose or became non-finite.
    assert outcome((2.3, 404.0)) == outcome((2.3, float("nan"))) == outcome((float("inf"),) * 2) == "diverged"
    assert outcome((2.3, 404.0), 0.1, 10) == "diverged"  # a low end cannot hide a rise
    # Falling, but not below the loss of a uniform guess over C classes (ln C): at chance, not diverged.
    assert outcome((3.26, 2.52), None, 10) == "at_chance" and outcome((3.26, 2.52)) == "finished"
    assert outcome((3.26, 2.30), None, 10) == "finished"  # ln 10 = 2.3026
    assert outcome((8.0, 6.91), None, 1000) == "at_chance" and outcome((8.0, 6.90), None, 1000) == "finished"
    # The end loss (the last epoch's last quarter) decides, where recorded: a one-epoch run that learned.
    assert outcome((2.64,), 2.10, 10) == "finished" and outcome((2.64,), 2.40, 10) == "at_chance"
    assert outcome((3.0, 2.2), 2.4, 10) == "at_chance"


def test_the_report_judges_runs_trained_under_an_older_rule_by_todays(tmp_path):
    """A run recorded as finished whose loss fell from 3.35 to 2.40 over 10 classes (above ln 10 = 2.303, at
    12.8% test accuracy) is counted as at chance, its accuracy kept in the csv; one at 2.20 still trained;
    one recorded as diverged whose loss fell is at chance too."""
    for seed, (last, acc, status) in enumerate([(2.40, 0.128, "finished"), (2.20, 0.30, "finished"),
                                                (2.50, 0.11, "diverged")]):
        fixture_run(tmp_path, f"r-{seed}", "v", "a", seed, acc, status)
        folder = tmp_path / f"r-{seed}"
        final = json.loads((folder / "final.json").read_text())
        (folder / "final.json").write_text(json.dumps({**final, "train_losses": [3.35, last]}))
        (folder / "meta.json").write_text(json.dumps({"fixedhead": "test", "classes": [str(c) for c in range(10)]}))
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "old", "variants": {"v": {}}}))
    result = write_report(tmp_path)
    assert result["counts"] == {"finished": 1, "diverged": 0, "at_chance": 2, "failed": 0, "unfinished": 0}
    assert "30.00 (n=1) [2/3 at chance]" in (tmp_path / "report.md").read_text()
    assert "0.128" in (tmp_path / "results.csv").read_text()


def test_retained_accuracy_and_its_ci_against_scipy(tmp_path):
    """Robustness is judged both ways: absolute corrupted accuracy and retained = corrupted / clean."""
    clean = {"fixed": [0.90, 0.92, 0.91], "learned": [0.80, 0.84, 0.82]}
    noisy = {"fixed": [0.60, 0.66, 0.61], "learned": [0.58, 0.62, 0.57]}
    for variant in clean:
        for seed in range(3):
            fixture_run(tmp_path, f"{variant}-{seed}", variant, "a", seed, clean[variant][seed])
            (tmp_path / f"{variant}-{seed}" / "evaluation.json").write_text(json.dumps({
                "clean_acc": clean[variant][seed], "num_test": 100, "generalization": {},
                "corruptions": {"impulse_noise": {"acc": {"1": noisy[variant][seed]}, "mean_acc": noisy[variant][seed],
                                                  "relative_drop": 0.0}}}))
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({
        "name": "rob", "variants": {"fixed": {}, "learned": {}},
        "report": {"rows": ["data.name"], "compare": [["fixed", "learned"], ["other", "learned"]],
                   "metrics": ["impulse_noise_mean_acc", "impulse_noise_retained"]}}))
    tables = {t["metric"]: t for t in write_report(tmp_path)["tables"]}
    ratio = {v: np.divide(noisy[v], clean[v]) for v in clean}
    assert tables["impulse_noise_retained"]["cells"]["a"]["fixed"]["mean"] == pytest.approx(ratio["fixed"].mean())
    for metric, values in (("impulse_noise_mean_acc", noisy), ("impulse_noise_retained", ratio)):
        ci = stats.ttest_rel(values["fixed"], values["learned"]).confidence_interval(0.95)  # paired by seed
        d = tables[metric]["diffs"]["fixed - learned"]["a"]
        assert (d["low"], d["high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # Here the fixed head is ahead on absolute accuracy but behind on retained accuracy.
    assert tables["impulse_noise_mean_acc"]["diffs"]["fixed - learned"]["a"]["diff"] > 0
    assert tables["impulse_noise_retained"]["diffs"]["fixed - learned"]["a"]["diff"] < 0
    assert "other - learned" not in (tmp_path / "report.md").read_text()  # a pair without runs prints nothing


def test_a_matched_selection_picks_one_value_per_row_by_the_mean_over_its_columns(tmp_path):
    """select per: row chooses the learning rate on validation for both heads at once; per cell each head
    gets its own. Two reports from one sweep, each under its title."""
    val = {(False, 0.001): [0.80, 0.82], (True, 0.001): [0.60, 0.62], (False, 0.1): [0.70, 0.72], (True, 0.1): [0.90, 0.88]}
    for (fixed, lr), values in val.items():
        for seed, v in enumerate(values):
            folder = tmp_path / f"{fixed}-{lr}-{seed}"
            folder.mkdir()
            (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "model": {"fixed": fixed},
                                                                "train": {"lr": lr}}))
            (folder / "final.json").write_text(json.dumps({"status": "finished", "seed": seed, "val_acc": v,
                                                           "test_acc": v - 0.01}))
            (folder / "meta.json").write_text(json.dumps({"fixedhead": "test"}))  # the marker of a run
    report = {"columns": ["model.fixed"], "rows": [], "metrics": ["test_acc", "train.lr"]}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({"name": "m", "grid": {"train.lr": [0.001, 0.1]}, "report": [
        {**report, "title": "matched", "select": {"key": "train.lr", "by": "val_acc", "per": "row"}},
        {**report, "title": "each its own", "select": {"key": "train.lr", "by": "val_acc"}}]}))
    result = write_report(tmp_path)
    matched, own = result["tables"][1], result["tables"][3]  # train.lr tables of each report
    # Mean validation over both heads: lr 0.001 -> 0.71, lr 0.1 -> 0.80, so both heads at 0.1.
    assert {c: matched["cells"]["all"][c]["mean"] for c in ("False", "True")} == {"False": 0.1, "True": 0.1}
    assert {c: own["cells"]["all"][c]["mean"] for c in ("False", "True")} == {"False": 0.001, "True": 0.1}
    text = result["markdown"]
    assert text.index("## matched") < text.index("## each its own")
    assert text.index("## matched") < text.index("in each row, one value for all columns") < text.index("## each its own")
    own_note = "Selected on validation: in each cell, the train.lr with the best mean val_acc"
    assert text.index("## each its own") < text.index(own_note)


def test_a_bad_report_list_is_one_error(tmp_path):
    experiment = {**EXPERIMENT, "report": [{"rows": []}, "nope"]}
    with pytest.raises(UserError, match="each report in the report list must be a mapping"):
        load_experiment(write(tmp_path, experiment))
    experiment["report"] = [{"select": {"key": "train.lr", "by": "val_acc", "per": "column"}}]
    with pytest.raises(UserError, match="per: cell|row"):
        load_experiment(write(tmp_path, experiment))


def test_an_edited_experiment_does_not_silently_reuse_runs_of_the_old_one(tmp_path, capsys):
    experiment = {"name": "e", "base": {**EXPERIMENT["base"], "train.epochs": 1}, "grid": {"train.lr": [0.05]}, "seeds": 1}
    path = write(tmp_path, experiment)
    out = tmp_path / "o"
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    final = (out / "lr=0.05__seed=0" / "final.json").read_text()
    # Same experiment again (data_dir is where, not what): reused.
    assert main(["sweep", str(path), "--out", str(out), "--set", "data.data_dir=/elsewhere"]) == 0
    capsys.readouterr()
    stored = (out / "experiment.yaml").read_text()
    experiment["base"]["train.epochs"] = 2
    experiment["grid"]["train.lr"] = [0.05, 0.1]  # and a run the old file did not have
    write(tmp_path, experiment)
    assert main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "1 finished run(s)" in err and "another train.epochs" in err and len(err.strip().splitlines()) == 1
    assert (out / "lr=0.05__seed=0" / "final.json").read_text() == final  # the old result is left as it was
    assert not (out / "lr=0.05__seed=0" / "failure.json").exists()
    # Nothing else happened: the new run was not trained beside the old one, the stored file not replaced.
    assert not (out / "lr=0.1__seed=0").exists() and (out / "experiment.yaml").read_text() == stored


def test_the_last_training_loss_is_a_report_metric(tmp_path):
    """Learning-rate tables show the final training loss beside accuracy (a blow-up that stayed finite)."""
    from fixedhead.experiments.report import collect

    fixture_run(tmp_path, "r", "v", "a", 0, 0.137, "diverged")
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    (tmp_path / "r" / "final.json").write_text(json.dumps({**final, "train_losses": [2.3, 404.0]}))
    record = collect(tmp_path)[0]
    assert record["train_loss"] == 404.0 and record["status"] == "diverged" and record["test_acc"] == 0.137


def test_set_on_a_grid_key_restricts_the_grid_and_on_a_variant_key_is_refused(tmp_path):
    path = write(tmp_path, EXPERIMENT)
    runs = expand(load_experiment(path, sets={"train.lr": "0.1"}))
    assert sorted({r.overrides["train.lr"] for r in runs}) == [0.1] and len(runs) == 2 * 2
    full = {r.name for r in expand(load_experiment(path))}
    assert {r.name for r in runs} <= full  # the same run names: a later full sweep reuses these runs
    both = expand(load_experiment(path, sets={"train.lr": "0.05,0.1"}))
    assert {r.name for r in both} == full
    with pytest.raises(UserError, match="overridden by the variants"):
        load_experiment(path, sets={"model.fixed": "true"})


def test_an_undefined_value_is_counted_not_averaged(tmp_path):
    """A learned head with no test error has no confusion to correlate: its Spearman is NaN. The cell
    shows the other seeds' mean and says 1/3 undefined, instead of a NaN mean for the whole cell."""
    for seed, rho in enumerate([0.2, 0.4, float("nan")]):
        fixture_run(tmp_path, f"r-{seed}", "v", "a", seed, 0.9, "finished")
        run = tmp_path / f"r-{seed}"
        (run / "analysis").mkdir()
        (run / "analysis" / "analysis.json").write_text(json.dumps({"spearman_rho": rho}))
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({
        "name": "u", "grid": {"data.name": ["a"]}, "variants": {"v": {}},
        "report": {"rows": ["data.name"], "columns": ["variant"], "metrics": ["spearman_rho"]}}))
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert f"| a | {0.3:.3f} ± {np.std([0.2, 0.4], ddof=1):.3f} (n=2) [1/3 undefined] |" in text


def test_a_missing_dataset_is_one_error_before_any_run(tmp_path, capsys):
    experiment = write(tmp_path, {**EXPERIMENT, "base": {**EXPERIMENT["base"], "data.name": "cifar10"}})
    missing = tmp_path / "no-such-folder"
    for extra in ([], ["--devices", "cpu,cpu"]):
        assert main(["sweep", str(experiment), "--out", str(tmp_path / "out"), "--set",
                     f"data.data_dir={missing}", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()  # no run folder, no failure record, no experiment.yaml
    folder = tmp_path / "empty"
    folder.mkdir()
    assert main(["sweep", str(experiment), "--out", str(tmp_path / "out"), "--set", f"data.data_dir={folder}"]) == 2
    assert "missing file" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_base_from_starts_from_the_named_files_base_and_this_files_keys_win(tmp_path):
    (tmp_path / "parts").mkdir()
    write(tmp_path / "parts", {"base": {"data.name": "digits", "train.epochs": 2, "train.lr": 0.5},
                               "variants": {"x": {}}}, "root.yaml")
    write(tmp_path / "parts", {"base_from": "root.yaml", "base": {"train.lr": 0.2, "train.batch_size": 64},
                               "variants": {"y": {}}}, "middle.yaml")
    leaf = write(tmp_path, {"base_from": "parts/middle.yaml", "base": {"train.batch_size": 32},
                            "variants": {"z": {}}, "seeds": 1})
    experiment = load_experiment(leaf, sets={"train.epochs": "3"})
    # resolved beside each file that names it, parents first, then each child's keys, then --set
    assert experiment["base"] == {"data.name": "digits", "train.epochs": "3", "train.lr": 0.2, "train.batch_size": 32}
    assert "base_from" not in experiment  # the record a sweep leaves in --out stands alone
    assert [r.variant for r in expand(experiment)] == ["z"]  # only the base is inherited


def test_base_from_is_read_beside_the_file_not_in_the_working_folder(tmp_path, monkeypatch):
    write(tmp_path, {"base": {"train.lr": 0.5}, "variants": {"x": {}}}, "root.yaml")
    (tmp_path / "elsewhere").mkdir()
    leaf = write(tmp_path / "elsewhere", {"base_from": "root.yaml", "variants": {"z": {}}})
    monkeypatch.chdir(tmp_path)  # root.yaml is in the working folder, but not beside leaf
    with pytest.raises(UserError, match="neither a file beside it nor a shipped experiment"):
        load_experiment(leaf)


def test_base_from_in_a_circle_is_one_error(tmp_path):
    write(tmp_path, {"base_from": "b.yaml", "variants": {"x": {}}}, "a.yaml")
    write(tmp_path, {"base_from": "a.yaml", "variants": {"x": {}}}, "b.yaml")
    with pytest.raises(UserError, match="circle"):
        load_experiment(tmp_path / "a.yaml")


@pytest.mark.parametrize("name", ["cpu-fast-epochs", "cpu-fast-small"])
def test_searches_built_on_cpu_fast_differ_from_it_only_where_they_say(name):
    """Recomputed from the YAML text alone: cpu-fast's base (a shipped name), then the file's own base, key by key."""
    shipped = Path(fixedhead.__file__).parent / "configs"
    recipe = yaml.safe_load((shipped / "speed/cpu-fast.yaml").read_text())
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "experiments" / "speed" / f"{name}.yaml"
    child = yaml.safe_load(path.read_text())
    assert child["base_from"] == "speed/cpu-fast"
    assert load_experiment(path)["base"] == {**recipe["base"], **child["base"]}
    assert set(child["base"]) <= {"data.val_fraction", "model.arch"}  # validation only; a narrower net at most
