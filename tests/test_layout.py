
"""The house's plan, checked: layers by folder with imports only downwards, a small top level, the run folder's
layout owned by runs.py alone, and shipped recipes that each read alone."""

import ast
from pathlib import Path

import pytest

from fixedhead.runs import CompareDir, RunDir, SweepDir

SRC = Path(__file__).resolve().parents[1] / "src" / "fixedhead"


def _layout_names() -> set[str]:
    folders = RunDir("r"), SweepDir("s"), CompareDir("c")
    paths = [v for folder in folders for v in vars(folder).values() if isinstance(v, Path) and v.name not in "rsc"]
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
    assert {"final.json", "model.pt", "metrics.jsonl", "analysis.json", "experiment.yaml", "summary.json",
            "compare.md"} <= names
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


# Each part of the package (a top-level module or a folder) and its layer: a part imports only parts below it.
LAYERS = {"errors": 0, "version": 0, "tables": 0, "metrics": 0, "files": 1, "devices": 1, "heads": 2, "trackers": 2,
          "plots": 2, "runs": 2, "models": 3, "data": 3, "optim": 3, "config": 4, "evaluation": 5, "training": 6,
          "experiments": 7, "cli": 8, "__main__": 9, "__init__": 9}


def _imports(path: Path) -> set[str]:
    """The package parts a module imports (relative imports resolved; lazy imports inside functions too)."""
    package = path.relative_to(SRC).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            parts = [*base, *(node.module.split(".") if node.module else [])]
            found |= {parts[0]} if parts else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fixedhead."):
            found.add(node.module.split(".")[1])
    return found


def test_every_import_goes_down_the_layers():
    assert {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()} \
        == set(LAYERS), "a new top-level part needs its layer in LAYERS"
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0].removesuffix(".py")
        upward += [f"{path.relative_to(SRC)} -> {other}" for other in _imports(path)
                   if other != part and LAYERS[other] >= LAYERS[part]]
    assert not upward, upward


def test_the_top_level_is_small_and_the_report_reads_records_only():
    assert len(list(SRC.glob("*.py"))) <= 16
    for name in ("report.py", "statistics.py"):
        assert not _imports(SRC / "experiments" / name) & {"models", "data", "heads", "training", "evaluation"}, name


def test_the_shipped_speed_recipes_are_few_and_each_reads_alone():
    import yaml

    recipes = sorted((SRC / "configs" / "speed").glob("*.yaml"))
    assert 1 <= len(recipes) <= 5
    assert not [p.name for p in recipes if "base_from" in yaml.safe_load(p.read_text())]


def test_the_paper_files_share_one_base():
    import yaml

    from fixedhead.experiments.experiment_file import load_experiment

    authors = yaml.safe_load((SRC / "configs" / "paper" / "_authors.yaml").read_text())["base"]
    for path in sorted((SRC / "configs" / "paper").glob("[!_]*.yaml")):
        assert yaml.safe_load(path.read_text())["base_from"] == "_authors.yaml", path.name
        base = load_experiment(path)["base"]
        assert {key: base[key] for key in authors} == authors, path.name
