import json

import numpy as np
import pytest
import torch

from fixedhead import analyze, fit
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.evaluation.analysis import compare
from tiny import TINY


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
    assert result["num_pairs"] == 90 and "confusion" not in result and "class_vector_cosine" not in result
    matrices = torch.load(folder / "matrices.pt", weights_only=True)
    assert matrices["confusion"].shape == matrices["class_vector_cosine"].shape == (10, 10)
    assert matrices["confusion"].sum().item() == result["num_images"] == 540
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


def test_the_matrices_beside_analysis_json_are_the_head_cosines_and_the_confusions(two_runs):
    """matrices.pt against numpy and scikit-learn, recomputed from the weights and the predictions; the
    same matrices come back from compare's reader, and from an analysis.json of the old inline form."""
    from sklearn.metrics import confusion_matrix

    from fixedhead.evaluation.analysis import load_or_analyze, run_outputs
    from fixedhead.runs import RunDir

    run = RunDir(two_runs / "learned")
    analyze(run.path, device="cpu")
    outputs = run_outputs(run.path, device="cpu")
    w = outputs["weight"].double().numpy()
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    expected = {"class_vector_cosine": unit @ unit.T,
                "confusion": confusion_matrix(outputs["labels"].numpy(), outputs["logits"].argmax(1).numpy(),
                                              labels=range(10))}
    loaded = load_or_analyze(run.path, device="cpu")
    for key, value in expected.items():
        np.testing.assert_allclose(loaded[key], value, atol=1e-12)
    old = json.loads(run.analysis_path.read_text()) | {key: value.tolist() for key, value in expected.items()}
    run.analysis_path.write_text(json.dumps(old))
    run.matrices_path.unlink()
    again = load_or_analyze(run.path, device="cpu")
    assert not run.matrices_path.exists()  # read from the old file, not analysed afresh
    for key, value in expected.items():
        np.testing.assert_allclose(again[key], value, atol=1e-12)


def test_a_million_point_scatter_stays_a_small_pdf(tmp_path):
    """At 1,000 classes the similarity-vs-confusion scatter has 999,000 points; as vectors its PDF was 8 MB."""
    from fixedhead import plots

    rng = np.random.default_rng(0)
    points = 1_000 * 999
    plots.similarity_confusion_scatter(rng.uniform(-1, 1, points), rng.poisson(0.1, points), 0.0, tmp_path / "s")
    assert 1_000 < (tmp_path / "s.pdf").stat().st_size < 500_000


def test_analyze_measures_a_model_of_your_own_trainer_as_it_measures_a_run(tiny_run, tmp_path):
    """analyze(model, loader): the same numbers as the run's own analysis, from a plain DataLoader."""
    import shutil

    from torch.utils.data import DataLoader, TensorDataset

    from fixedhead import analyze
    from fixedhead.evaluation.trained import open_split

    run = shutil.copytree(tiny_run, tmp_path / "run")
    expected = analyze(run, device="cpu")
    trained, batches = open_split(run, "test", "cpu")
    images = torch.cat([batches.normalise(batches.images[i:i + 500]) for i in range(0, len(batches.images), 500)])
    loader = DataLoader(TensorDataset(images, batches.labels), batch_size=128)
    got = analyze(trained.model, loader=loader)
    for key in ("acc", "spearman_rho", "mean_cos_to_predicted", "class_vector_cos_max", "scatter_ratio", "nc1"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_analyze_finds_the_linear_head_of_a_torchvision_model():
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    from fixedhead import analyze
    from fixedhead.metrics import cosine_matrix, off_diagonal

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    images, labels = torch.randn(24, 3, 32, 32), torch.arange(4).repeat(6)
    got = analyze(model, loader=DataLoader(TensorDataset(images, labels), batch_size=8))
    assert model.training  # measured in eval mode, then given back in the mode it came in
    model.eval()
    with torch.no_grad():
        logits = model(images)
    assert got["acc"] == pytest.approx((logits.argmax(1) == labels).double().mean().item())
    assert got["class_vector_cos_max"] == pytest.approx(off_diagonal(cosine_matrix(model.fc.weight.detach())).max().item())
