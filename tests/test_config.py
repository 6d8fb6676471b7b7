import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixedhead.config import Config, all_keys, fields, flat, make_config, parse_overrides, read_yaml, to_dict
from fixedhead.errors import UserError


def test_defaults_round_trip_through_a_dict():
    assert to_dict(make_config(to_dict(Config()))) == to_dict(Config())


def test_layers_apply_in_order_and_coerce_strings():
    config = make_config({"train": {"lr": 0.5}}, {"train.lr": "1e-3", "model.fixed": "true", "train.epochs": "3"})
    assert config.train.lr == 0.001 and config.model.fixed is True and config.train.epochs == 3


def test_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 4\nmodel:\n  similarity: cosine\n  scale: 16\n")
    config = make_config(read_yaml(path))
    assert (config.seed, config.model.similarity, config.model.scale) == (4, "cosine", 16.0)


@pytest.mark.parametrize("layer,match", [
    ({"train.lrr": 1}, "unknown config key 'train.lrr'; did you mean train.lr"),
    ({"train.schedule": "onecycle"}, "choose one of: linear, cosine, step, constant, plateau"),
    ({"train.optimizer": "adam"}, "choose one of: sgd, adamw, muon, timm:NAME"),
    ({"model": {"similarity": "euclid"}}, "choose one of: dot, cosine"),
    ({"model.arch": "resnet1000"}, "choose one of: resnet18"),
    ({"data.name": "mnist2"}, "choose one of: digits, imagefolder"),
    ({"model.init": "zeros"}, "random, uniform-int, orthogonal, hadamard, simplex"),
    ({"model.similarity": "cosine", "model.scale": 0}, r"model.scale must be a number in \(0, 10_000\]"),
    ({"train.epochs": -1}, r"train.epochs must be a number in \[0, 100_000\] \(a fraction ends the last epoch early\)"),
    ({"train.epochs": "two"}, "train.epochs must be a number, got 'two'"),
    ({"model.whiten_bias_epochs": 1.5}, "model.whiten_bias_epochs must be an integer"),
    ({"model.fixed": "maybe"}, "model.fixed must be true or false"),
    ({"seed.x": 1}, "unknown config key"),
    ({"train.warmup_start": 0.2, "train.warmup_epochs": 0}, "train.warmup_start=0.2 sets where the warm-up starts"),
    ({"train.warmup_start": 0.2, "train.schedule": "plateau"}, "has none"),
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
    with pytest.raises(UserError, match="config file .*missing.yaml does not exist"):
        read_yaml(tmp_path / "missing.yaml")


@given(key=st.sampled_from(all_keys()), value=st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.booleans()))
def test_any_override_either_applies_or_raises_user_error(key, value):
    try:
        config = make_config({key: value})
    except UserError:
        return
    assert isinstance(config, Config)


# Values a hostile or careless config may hold: any size of number, non-finite floats, YAML-looking text,
# nested containers.
HOSTILE_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
              st.sampled_from([".inf", "-.inf", ".nan", "1e400", "1e-400", "0x10", "[1, 2]", "{a: 1}", "&a [*a]",
                               "!!python/object/apply:os.system ['true']", "~", "null", "- x"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)


def _check_accepted_or_one_line(layer):
    try:
        config = make_config(layer)
    except UserError as error:
        message = str(error)
        assert "\n" not in message and len(message) < 2000
        return
    values = flat(config)
    for key, spec in fields().items():
        within = spec.metadata["within"]
        assert within is None or within[0](values[key]), key


@given(key=st.sampled_from(all_keys()), value=HOSTILE_VALUES)
def test_any_value_for_any_key_is_accepted_within_range_or_one_line(key, value):
    _check_accepted_or_one_line({key: value})


@given(key=st.sampled_from(all_keys()), value=HOSTILE_VALUES)
def test_any_value_given_as_text_with_set_is_accepted_within_range_or_one_line(key, value):
    _check_accepted_or_one_line(parse_overrides([f"{key}={value}"]))


def test_the_schema_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, fixedhead.config as c; c.Config(); c.all_keys(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["report", "--help"]])
def test_version_and_help_answer_without_torch(argv):
    import subprocess
    import sys

    code = ("import sys\nfrom fixedhead.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == "False\n" and ("fixedhead" in done.stdout)


def test_every_word_valued_key_is_checked_against_the_registry_beside_its_code():
    from fixedhead.config import choices
    from fixedhead.data.pipeline import TTA_VIEWS
    from fixedhead.optim import OPTIMIZERS, SCHEDULES

    found = choices()
    assert found["train.schedule"] == tuple(SCHEDULES) and found["train.optimizer"] == tuple(OPTIMIZERS)
    assert found["train.tta"] == tuple(TTA_VIEWS)
    for key, words in found.items():
        if key != "model.arch":
            with pytest.raises(UserError, match="choose one of"):
                make_config({key: "no-such-" + words[0]})


def test_bf16_is_true_false_or_auto_and_auto_follows_the_device(monkeypatch):
    import fixedhead.devices as devices

    assert make_config({"train.bf16": "auto"}).train.bf16 == "auto"
    assert make_config(parse_overrides(["train.bf16=auto"])).train.bf16 == "auto"
    assert make_config(parse_overrides(["train.bf16=true"])).train.bf16 is True
    with pytest.raises(UserError, match="train.bf16 must be true or false or auto, got 'fast'"):
        make_config({"train.bf16": "fast"})
    x = torch.ones(4, 4)
    for native in (False, True):
        monkeypatch.setattr(devices, "native_bf16", lambda device, native=native: native)
        for setting, expected in ((True, True), (False, False), ("auto", native)):
            assert devices.use_bf16(setting, "cpu") is expected
            with devices.autocast(torch.device("cpu"), setting):  # oracle: the dtype autocast gives a matmul
                assert (x @ x).dtype == (torch.bfloat16 if expected else torch.float32), (native, setting)
