"""Packaging as a user meets it: a built wheel works without the clone, `import fixedhead` stays light."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_load_plotting_or_scipy_or_pick_a_backend():
    code = ("import sys, matplotlib; before = matplotlib.get_backend(); import fixedhead; "
            "heavy = [m for m in ('matplotlib.pyplot', 'scipy', 'sklearn', 'fixedhead.plots', 'timm') if m in sys.modules]; "
            "assert not heavy, heavy; assert matplotlib.get_backend() == before")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "svg"})


def test_the_head_api_loads_without_the_analysis_stack():
    """ClassHead, Classifier and swap_head need torch only: no scipy, scikit-learn, matplotlib or YAML."""
    code = ("import sys; from fixedhead import ClassHead, Classifier, swap_head; "
            "heavy = [m for m in ('scipy', 'sklearn', 'matplotlib', 'yaml', 'fixedhead.config') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_drawing_a_figure_leaves_the_backend_alone(tmp_path):
    code = ("import matplotlib, numpy as np; from pathlib import Path; from fixedhead import plots; "
            "plots.feature_scatter(np.zeros((4, 2)), np.array([0, 1, 0, 1]), ['a', 'b'], Path(r'%s') / 'f', 't'); "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()" % tmp_path)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "MPLBACKEND": "svg"})
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "f.pdf").stat().st_size > 0


@pytest.mark.slow
def test_a_built_wheel_runs_its_commands_without_the_clone(tmp_path):
    """python -m build, then the wheel installed into an empty folder that comes first on the path
    (dependencies from this environment): the CLI runs, packaged experiment files resolve by name,
    the embedded data loads, and the licence and py.typed ship."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("fixedhead-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fixedhead/py.typed" in names and "fixedhead/configs/paper/table1.yaml" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, check=True)

    where = run("-c", "import fixedhead; print(fixedhead.__file__)").stdout.strip()
    assert where.startswith(str(target)), where
    assert "usage: fixedhead demo" in run("-m", "fixedhead", "demo", "--help").stdout
    listed = run("-m", "fixedhead", "sweep", "paper/table1", "--out", "o", "--dry-run").stdout
    assert "runs planned" in run("-m", "fixedhead", "sweep", "configs/mini/table3.yaml", "--out", "o",
                                 "--dry-run").stdout
    assert "authors-dot-learned" in listed or "seed=0" in listed
    run("-c", "import fixedhead.data as d; assert len(d.load('fashion-mnist-mini', split='test').labels) == 2000")


def test_a_command_that_needs_an_extra_names_it_in_one_line(tmp_path, capsys, monkeypatch):
    """The core install leaves scipy, scikit-learn and matplotlib out (the analysis extra): a command that
    needs one says which extra brings it."""
    import sys

    from fixedhead.cli import main

    for name in [n for n in sys.modules if n == "sklearn" or n.startswith("sklearn.")] or ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if scikit-learn were not installed (loaded parts too)
    code = main(["train", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'fixedhead[analysis]'" in err and "sklearn" in err


def test_the_package_type_checks(tmp_path):
    """The wheel says Typing :: Typed (py.typed): mypy, configured in pyproject.toml, finds no error."""
    api = pytest.importorskip("mypy.api")
    root = Path(__file__).resolve().parents[1]
    out, err, status = api.run(["--config-file", str(root / "pyproject.toml"), "--cache-dir", str(tmp_path),
                                str(root / "src" / "fixedhead")])
    assert status == 0, out + err
