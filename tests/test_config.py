import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixedhead.config import Config, all_keys, make_config, parse_overrides, read_yaml, to_dict
from fixedhead.errors import UserError


def test_defaults_round_trip_through_a_dict():
    assert to_dict(make_config(to_dict(Config()))) == to_dict(Config())


def test_layers_apply_in_order_and_coerce_strings():
    config = make_config({"train": {"lr": 0.5}}, {"train.lr": "1e-3", "model.fixed": "true", "train.epochs": "3"})
    assert config.train.lr == 0.001 and config.model.fixed is True and config.train.epochs == 3


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\nmodel:\n  head: cosine\n  scale: 16\n")
    config = make_config(read_yaml(path))
    assert (config.seed, config.model.head, config.model.scale) == (4, "cosine", 16.0)


@pytest.mark.parametrize("layer,match", [
    ({"train.lrr": 1}, "unknown config key 'train.lrr'; valid keys: seed, data.name"),
    ({"model": {"head": "euclid"}}, "choose one of: dot, cosine"),
    ({"model.arch": "resnet1000"}, "choose one of: resnet18"),
    ({"data.name": "mnist2"}, "choose one of: digits, imagefolder"),
    ({"model.init": "zeros"}, "random, uniform-int, orthogonal, hadamard, simplex"),
    ({"model.head": "cosine", "model.scale": 0}, "model.scale must be a finite number > 0"),
    ({"train.epochs": -1}, "train.epochs must be an integer >= 0"),
    ({"train.epochs": 2.5}, "train.epochs must be an integer"),
    ({"model.fixed": "maybe"}, "model.fixed must be true or false"),
    ({"model.scale": 2}, "cosine heads only"),
    ({"seed.x": 1}, "unknown config key"),
])
def test_bad_values_name_the_key_and_the_choices(layer, match):
    with pytest.raises(UserError, match=match):
        make_config(layer)


def test_bad_override_syntax_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_yaml(bad)
    with pytest.raises(UserError, match="cannot read config file"):
        read_yaml(tmp_path / "missing.yaml")


@given(key=st.sampled_from(all_keys()), value=st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.booleans()))
def test_any_override_either_applies_or_raises_user_error(key, value):
    try:
        config = make_config({key: value})
    except UserError:
        return
    assert isinstance(config, Config)
