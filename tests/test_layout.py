
"""The run folder's layout has one owner: no module but runs.py spells a run or sweep folder's file name."""

import ast
from pathlib import Path

import pytest

from fixedhead.runs import RunDir, SweepDir

SRC = Path(__file__).resolve().parents[1] / "src" / "fixedhead"


def _layout_names() -> set[str]:
    run, sweep = RunDir("r"), SweepDir("s")
    paths = [v for v in (*vars(run).values(), *vars(sweep).values()) if isinstance(v, Path) and v.name not in "rs"]
    return {p.name for p in paths if "." in p.name}  # file names; bare words like "analysis" are prose too


def _string_constants(tree: ast.AST) -> list[str]:
    """String literals in code, not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_runs_py_spells_a_run_folder_file_name():
    names = _layout_names()
    assert {"final.json", "model.pt", "metrics.jsonl", "analysis.json", "experiment.yaml"} <= names
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "runs.py":
            continue
        for text in _string_constants(ast.parse(path.read_text())):
            offenders += [f"{path.relative_to(SRC)}: {name} in {text!r}" for name in names if name in text]
    assert not offenders, offenders


def test_the_config_reference_in_the_docs_is_the_generated_one():
    from fixedhead.config import reference_table

    text = (SRC.parents[1] / "docs" / "config.md").read_text()
    generated = text.split("<!-- generated: config reference -->\n", 1)[1].split("\n<!-- end generated -->", 1)[0]
    assert generated == reference_table(), "regenerate docs/config.md's table with fixedhead.config.reference_table()"


def test_the_version_has_one_source_the_package_metadata():
    from importlib import metadata

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    import fixedhead
    from fixedhead.version import VERSION

    declared = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert fixedhead.__version__ == VERSION == metadata.version("fixedhead") == declared
    sources = [p.name for p in SRC.rglob("*.py") if declared in p.read_text()]
    assert not sources, f"the version is spelled out in {sources}; read it from fixedhead.version"
