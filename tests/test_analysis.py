import json

import pytest

from fixedhead import analyze, fit
from fixedhead.analysis import compare
from fixedhead.cli import main
from fixedhead.config import make_config

TINY = {"data.name": "digits", "model.arch": "fastnet-small", "train.epochs": 2, "train.batch_size": 128}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for fixed in (False, True):
        fit(make_config(TINY, {"model.fixed": fixed}), root / ("fixed" if fixed else "learned"), verbose=False)
    return root


def test_analyze_from_the_cli_writes_json_and_figures(two_runs, capsys):
    assert main(["analyze", str(two_runs / "fixed"), "--cluster"]) == 0
    out = capsys.readouterr().out
    assert "spearman_rho" in out and "scatter_ratio" in out
    folder = two_runs / "fixed" / "analysis"
    result = json.loads((folder / "analysis.json").read_text())
    assert result["num_pairs"] == 90 and len(result["confusion"]) == 10
    assert sum(map(sum, result["confusion"])) == result["num_images"] == 540
    final = json.loads((two_runs / "fixed" / "final.json").read_text())
    assert result["acc"] == pytest.approx(final["test_acc"])
    for name in ("class_vector_cosine", "similarity_vs_confusion", "features_pca"):
        for suffix in (".png", ".pdf"):
            assert (folder / f"{name}{suffix}").stat().st_size > 1000


def test_compare_puts_runs_side_by_side(two_runs, tmp_path, capsys):
    assert main(["compare", str(two_runs / "learned"), str(two_runs / "fixed"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| learned |" in out and "| fixed |" in out
    assert (tmp_path / "class_vector_cosine.png").stat().st_size > 1000
    assert (tmp_path / "compare.md").read_text().count("\n") == 4


def test_two_dimensional_features_are_drawn_with_rays(tmp_path):
    fit(make_config(TINY, {"model.num_features": 2, "model.fixed": True}), tmp_path / "r", verbose=False)
    result = analyze(tmp_path / "r")
    assert "features_2d.png" in result["figures"] and result["head"]["num_features"] == 2


def test_unfinished_run_is_analysed_from_its_checkpoint(two_runs, tmp_path, capsys):
    import shutil

    shutil.copytree(two_runs / "learned", tmp_path / "cut")
    (tmp_path / "cut" / "model.pt").unlink()
    (tmp_path / "cut" / "final.json").unlink()
    assert main(["analyze", str(tmp_path / "cut")]) == 0
    assert "unfinished" in capsys.readouterr().err


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "nothing", "is not a folder"),
    (lambda p: p, "model.pt does not exist"),
])
def test_not_a_run(tmp_path, capsys, make, match):
    code = main(["analyze", str(make(tmp_path))])
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1


def test_run_whose_dataset_is_missing(tmp_path, capsys):
    from conftest import write_image_folder

    images = write_image_folder(tmp_path / "images")
    fit(make_config(TINY, {"data.name": "imagefolder", "data.data_dir": str(images), "train.batch_size": 6}),
        tmp_path / "r", verbose=False)
    import shutil

    shutil.rmtree(images)
    code = main(["analyze", str(tmp_path / "r")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_compare_without_runs_is_an_error():
    with pytest.raises(Exception, match="at least one"):
        compare([])
