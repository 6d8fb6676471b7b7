"""The font-rendered glyphs dataset: deterministic, font-disjoint, balanced, every image inked, and the
class-count curve runs end to end."""

import functools

import numpy as np
import pytest
import yaml

from fixedhead.cli import main
from fixedhead.data import fonts, glyphs, load
from fixedhead.errors import UserError


def fresh(monkeypatch):
    """Empty in-process caches for this test; the warm ones come back after it."""
    for name in ("_survey", "_sides", "plan"):
        monkeypatch.setattr(glyphs, name, functools.lru_cache()(getattr(glyphs, name).__wrapped__))


@pytest.fixture(scope="module")
def plan30():
    return glyphs.plan(30)


def test_same_bytes_twice_and_with_any_number_of_processes(plan30):
    one = glyphs.render(plan30, "test", processes=1)
    two = glyphs.render(glyphs.plan(30), "test", processes=2)
    assert one["images"].tobytes() == two["images"].tobytes()
    assert np.array_equal(one["labels"], two["labels"]) and one["classes"] == two["classes"]


def test_train_and_test_fonts_are_disjoint_designs(plan30):
    for ch in plan30.classes:
        train = {f.design for f in plan30.train_faces[ch]}
        test = {f.design for f in plan30.test_faces[ch]}
        assert not train & test
        assert len(train) >= glyphs.MIN_TRAIN_DESIGNS and len(test) >= glyphs.MIN_TEST_DESIGNS
        assert not {(f.path, f.index) for f in plan30.train_faces[ch]} & {(f.path, f.index) for f in plan30.test_faces[ch]}


def test_balanced_inked_and_never_tofu(plan30):
    from fontTools.ttLib import TTFont

    for split, per_class in (("train", glyphs.TRAIN_PER_CLASS), ("test", glyphs.TEST_PER_CLASS)):
        arrays = glyphs.render(plan30, split)
        assert arrays["images"].shape == (30 * per_class, 1, glyphs.SIZE, glyphs.SIZE)
        assert np.bincount(arrays["labels"], minlength=30).tolist() == [per_class] * 30
        ink = (arrays["images"].reshape(len(arrays["labels"]), -1) > 64).sum(1)
        assert ink.min() >= 3  # every image shows its glyph
    for ch in plan30.classes:  # each font used for a class maps it to a real glyph (not .notdef)
        for face in plan30.train_faces[ch][:3] + plan30.test_faces[ch][:3]:
            name = TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap().get(ord(ch))
            assert name not in (None, ".notdef"), (face, ch)


def test_smaller_class_sets_are_nested_in_larger_ones(plan30):
    assert glyphs.plan(10).classes == plan30.classes[:10]


def test_look_alikes_stay_but_identical_glyphs_do_not():
    classes = set(glyphs.plan(250).classes)
    for same in (("A", "\u0391", "\u0410"), ("B", "\u0392", "\u0412"), ("P", "\u03a1", "\u0420")):
        assert len(classes & set(same)) == 1, same  # Latin, Greek, Cyrillic: one drawing, one class
    assert {"0", "1", "|"} <= classes and classes & {"O", "\u039f", "\u041e"}  # look-alikes of 0 and l stay


def test_too_many_classes_and_no_fonts_are_one_line(monkeypatch, capsys, tmp_path):
    assert main(["data", "info", "glyphs", "--num-classes", "99999"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "can draw at most" in err and "99999 asked" in err
    experiment = tmp_path / "e.yaml"  # a sweep refuses before its first run, writing nothing
    experiment.write_text("name: e\nbase: {data.name: glyphs, train.epochs: 1}\ngrid: {data.num_classes: [10, 99999]}\n")
    assert main(["sweep", str(experiment), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "99999 asked" in err and not (tmp_path / "out").exists()
    monkeypatch.setattr(fonts, "faces", lambda source: [])
    fresh(monkeypatch)
    with pytest.raises(UserError, match="no usable fonts"):
        glyphs.plan(10)


def test_without_system_fonts_matplotlib_fonts_give_a_smaller_set(monkeypatch):
    monkeypatch.setattr(fonts, "system_faces", lambda: [])
    fresh(monkeypatch)
    plan = glyphs.plan(20)
    assert plan.source == "matplotlib" and all("matplotlib" in f.path for f in plan.faces)
    with pytest.raises(UserError, match="Debian font packages"):
        glyphs.plan(2000)


def test_loaded_through_the_registry_and_cached(tmp_path):
    first = load("glyphs", split="test", num_classes=10)
    again = load("glyphs", split="test", num_classes=10)
    assert first.images.shape == (10 * glyphs.TEST_PER_CLASS, 1, 32, 32) and len(first.classes) == 10
    assert bool((first.images == again.images).all())
    with pytest.raises(UserError, match="generated datasets"):
        load("digits", num_classes=10)


def test_num_classes_for_a_dataset_with_its_own_classes_is_one_line_before_anything_is_written(tmp_path, capsys):
    from fixedhead.cli import main

    assert main(["train", "--data", "digits", "--set", "data.num_classes=10", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.num_classes is for generated datasets (glyphs); 'digits'" in err
    assert not (tmp_path / "run").exists()


def test_a_tiny_class_count_sweep_runs_and_reports(tmp_path):
    experiment = {
        "name": "classes-tiny", "base": {"data.name": "glyphs", "model.arch": "fastnet-small", "train.epochs": 1,
                                         "train.batch_size": 128},
        "variants": {"cosine-learned": {"model.similarity": "cosine", "model.fixed": False, "train.weight_decay": 0},
                     "cosine-fixed": {"model.similarity": "cosine", "model.fixed": True, "train.weight_decay": 0}},
        "grid": {"data.num_classes": [10, 20]}, "seeds": 1,
        "report": {"rows": ["data.num_classes"], "columns": ["variant"], "metrics": ["test_acc"], "curve": True,
                   "compare": [["cosine-fixed", "cosine-learned"]]},
    }
    path = tmp_path / "classes.yaml"
    path.write_text(yaml.safe_dump(experiment))
    assert main(["sweep", str(path), "--out", str(tmp_path / "o")]) == 0
    assert main(["report", str(tmp_path / "o")]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| 10 |" in report and "| 20 |" in report and report.index("| 10 |") < report.index("| 20 |")
    for name in ("figure_test_acc.png", "figure_test_acc_cosine_fixed_cosine_learned.png"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    meta = (tmp_path / "o").glob("cosine-fixed__num_classes=20__seed=0/meta.json")
    assert '"num_classes": 20' in next(meta).read_text()
