"""Typed run configuration: dataclass defaults, YAML overrides, `key=value` overrides, validation.

Each field carries its help text and what it accepts (a range, a list of words, or the registry of the code
that implements its choices) in its metadata: the CLI's flags and `--help` and docs/config.md are made from
them. Importing this module needs no torch: the registries are read when a config is validated (`choices`).
Unknown keys and bad values raise UserError naming the key and the accepted values.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

import yaml

from . import files
from .errors import UserError, one_line, shown

MAX_SEED = 2**31 - 1


def _within(low, high, optional: bool = False, low_open: bool = False, high_open: bool = False, note: str = "",
            what: str = "a number"):
    """(test, what is accepted) for a number in a range; bounded above too, so that a huge value is
    refused here and never reaches an allocation or an overflow."""
    def test(value):
        if value is None:
            return optional
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return (isinstance(value, int) or math.isfinite(value)) and above and below
    bounds = f"{'(' if low_open else '['}{low:_}, {high:_}{')' if high_open else ']'}"
    return test, f"{what} in {bounds}{note}" + (" or null" if optional else "")


def _count(low, high, optional: bool = False, note: str = ""):
    return _within(low, high, optional, note=note, what="an integer")


def _key(default, help: str, *, within=None, choices=None, words: tuple = ()):
    """A config field: its default, its help, and what it accepts besides its type: `within` a (test, text)
    range, `choices` the words it takes (a tuple here, or the name of a registry in `registries()`), `words`
    words it takes besides its type (train.bf16: auto)."""
    meta = {"help": help, "within": within, "choices": choices, "words": words}
    if isinstance(default, (dict, list)) or callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _key("digits", "the dataset (docs/usage.md: Datasets)", choices="datasets")
    data_dir: Optional[str] = _key(None, "folder holding it (--data-dir)")
    variant: Optional[str] = _key(None, "cifar100: fine | coarse; cifar10.1: v6 | v4; None: the dataset's default")
    num_classes: Optional[int] = _key(None, "glyphs: how many characters (classes); None: 100",
                                      within=_count(2, 100_000, optional=True, note=" (glyphs only)"))
    image_size: Optional[int] = _key(None, "resize every image to this side; None keeps the size (with model.pretrained: "
                                     "the side the model was pretrained at)",
                                     within=_count(8, 1024, optional=True))
    val_fraction: float = _key(0.0, "held out of train; 0.1 is used when the schedule or selection needs one",
                               within=_within(0, 1, high_open=True))
    imbalance: float = _key(1.0, "a long-tailed training split: largest / smallest class's images (1: as is); "
                            "validation and test stay as they are", within=_within(1, 1_000_000))
    imbalance_type: str = _key("exp", "exp: class i keeps n_max x imbalance^(-i/(C-1)) (LDAM's protocol); step: "
                               "half the classes keep n_max / imbalance", choices=("exp", "step"))
    imbalance_seed: int = _key(0, "which images a long-tailed split keeps (the same for every run seed)",
                               within=_count(0, 2**31 - 1))
    augment: bool = _key(True, "random crops (and flips) of the training images")
    crop_padding: Optional[int] = _key(None, "None: image side // 8 (4 at 32 px)", within=_count(0, 256, optional=True))
    crop_padding_mode: str = _key("zeros", "what the crop pads with: zeros (black) or reflect (mirrored edge; airbench)",
                                  choices="padding_modes")
    flip: Optional[bool] = _key(None, "None: the dataset's default (no flips for digits)")
    alternating_flip: bool = _key(False, "mirror each image in every other epoch instead of at random")
    low_res_size: Optional[int] = _key(None, "progressive resizing: early epochs train on images scaled down to this side",
                                       within=_count(4, 1024, optional=True))
    low_res_epochs: int = _key(0, "how many early epochs do (cheaper steps; evaluation stays full size)",
                               within=_count(0, 100_000, note=" (0: off)"))


@dataclass
class ModelConfig:
    arch: str = _key("fastnet", "the encoder (docs/usage.md: Encoders), or a library model: timm:NAME, torchvision:NAME",
                     choices="encoders")
    pretrained: bool = _key(False, "timm:/torchvision: models: start from the library's pretrained weights, "
                            "normalised as the model was (its data config)")
    weights: Optional[str] = _key(None, "a local file of encoder weights to start from (safetensors, or a torch state "
                                  "dict; a library model's own classifier keys are dropped)")
    similarity: str = _key("dot", "dot or cosine: how features meet class vectors (the paper's word)",
                           choices="similarities")
    fixed: bool = _key(False, "class vectors frozen at their random draw (a buffer, never trained)")
    scale: float = _key(1.0, "logit scale S: S cos(f, w) (cosine) or S f.w (dot); airbench: dot, 1/9",
                        within=_within(0, 10_000, low_open=True))
    learn_scale: bool = _key(False, "learn S")
    init: str = _key("random", "how class vectors are drawn (README: Heads in any model)", choices="inits")
    bias: bool = _key(False, "a learned bias per class")
    head_seed: Optional[int] = _key(None, "None: the run's seed", within=_count(0, MAX_SEED, optional=True))
    num_features: Optional[int] = _key(None, "a linear layer to this many features after the encoder (2: the paper's "
                                       "pictures)", within=_count(1, 65536, optional=True))
    pool: str = _key("avg", "resnets only: \"authors\" is the reference code's fixed 4x4 average pool", choices="pools")
    neck: str = _key("none", "bn: batch norm after the encoder, so features take both signs (lifts the cosine ceiling)",
                     choices="necks")
    vectors: str = _key("stored", "fixed heads with very many classes: bf16 or regenerate (from the seed), blockwise "
                        "loss", choices="vectors")
    whiten: str = _key("none", "first convolution: \"init\" patch-whitening filters of the training images, \"frozen\" "
                       "too", choices="whitening")
    whiten_bias_epochs: Optional[int] = _key(None, "the whitened conv's bias learns this many epochs only (airbench: 3)",
                                             within=_count(0, 100_000, optional=True))


@dataclass
class TrainConfig:
    epochs: float = _key(10.0, "passes over the training split",
                         within=_within(0, 100_000, note=" (a fraction ends the last epoch early)"))
    images_seen: Optional[int] = _key(None, "a training budget instead: epochs = round(budget / images per epoch), at "
                                      "least 1", within=_count(1, 10**12, optional=True))
    batch_size: int = _key(128, "the global batch (split across torchrun processes)", within=_count(1, 1 << 20))
    lr: float = _key(0.1, "peak learning rate", within=_within(0, 1000, low_open=True))
    momentum: float = _key(0.9, "SGD momentum; adamw's beta1", within=_within(0, 1, high_open=True))
    beta2: float = _key(0.999, "adamw's second-moment decay", within=_within(0, 1, high_open=True))
    decoupled: bool = _key(False, "lr and weight_decay in airbench's units: per 1,024 images, apart from momentum and "
                           "each other")
    bn_bias_lr: float = _key(1.0, "lr multiplier of batch-norm shifts, their weight decay divided by it (airbench: 64)",
                             within=_within(0, 10_000, low_open=True))
    nesterov: bool = _key(True, "Nesterov momentum")
    optimizer: str = _key("sgd", "sgd, adamw (torch's); muon: conv filters take Muon steps (airbench94_muon), the "
                          "rest SGD (batch-normed nets); timm:NAME: one of timm's optimizers", choices="optimizers")
    layer_decay: Optional[float] = _key(None, "lr x layer_decay ** (layers above): timm's layer-wise decay, for "
                                        "models with timm's group_matcher", within=_within(0, 1, optional=True,
                                                                                             low_open=True))
    muon_lr: float = _key(0.24, "Muon's step for the filters, each bank rescaled to norm sqrt(out) first "
                          "(airbench94_muon: 0.24)", within=_within(0, 1000, low_open=True))
    muon_momentum: float = _key(0.6, "Muon's momentum (airbench94_muon: 0.6)", within=_within(0, 1, high_open=True))
    weight_decay: float = _key(5e-4, "on encoder parameters; none on the head's bias or scale", within=_within(0, 1))
    head_weight_decay: Optional[float] = _key(None, "learned class vectors; None: same as weight_decay",
                                              within=_within(0, 1, optional=True))
    schedule: str = _key("linear", "linear: warm-up then decay to 0; plateau: x0.2 after 3 epochs without better val "
                         "loss", choices="schedules")
    plateau_on: str = _key("loss", "what the plateau schedule watches on validation: loss (min) or acc (max, the "
                           "authors')", choices="plateau_on")
    warmup_epochs: float = _key(1.0, "linear warm-up length (not for plateau)", within=_within(0, 100_000))
    warmup_start: float = _key(0.0, "the warm-up starts at this fraction of the peak lr (airbench: 0.2)",
                               within=_within(0, 1))
    final_lr: float = _key(0.0, "the linear and cosine schedules end at this fraction of the peak lr (airbench: 0.07)",
                           within=_within(0, 1))
    label_smoothing: float = _key(0.0, "of the cross-entropy", within=_within(0, 1, high_open=True))
    loss: str = _key("ce", "ce; logit-adjusted: + logit_tau x log prior in training (Menon et al. 2021); "
                     "dot-regression: 1/2 (cos(f, w_y) - 1)^2 (Yang et al. 2022; fixed heads)",
                     choices=("ce", "logit-adjusted", "dot-regression"))
    logit_tau: float = _key(1.0, "train.loss=logit-adjusted's tau", within=_within(0, 100))
    class_weights: str = _key("none", "balanced: each class's loss weighted n / (C x n_c) (scikit-learn's rule)",
                              choices=("none", "balanced"))
    mixup: float = _key(0.0, "MixUp's alpha (torchvision); 0: off; with cutmix, one of the two per batch",
                        within=_within(0, 100))
    cutmix: float = _key(0.0, "CutMix's alpha (torchvision); 0: off", within=_within(0, 100))
    accumulate: int = _key(1, "batches whose gradients one optimizer step gathers (their mean): a step sees "
                           "batch_size x accumulate images", within=_count(1, 1_000_000))
    clip_grad: Optional[float] = _key(None, "clip the gradients' global L2 norm to this before each step",
                                      within=_within(0, 1e9, optional=True, low_open=True))
    ema: Optional[float] = _key(None, "decay of an exponential moving average of the weights, updated every step; "
                                "validation and the final weights are the average's", within=_within(
                                    0, 1, optional=True, low_open=True, high_open=True))
    fp16: bool = _key(False, "float16 autocast with a gradient scaler (CUDA; not with bf16)")
    lookahead: int = _key(0, "sync slow and fast weights every this many steps (airbench: 5); 0: off",
                          within=_count(0, 1_000_000, note=" (0: off)"))
    select: str = _key("last", "which weights are final: the last epoch's, or the best on validation",
                       choices=("last", "best_val"))
    bf16: typing.Union[bool, str] = _key(False, "bf16 autocast; auto: on where it is fast (CUDA, CPUs with bf16 "
                                         "instructions)", words=("auto",))
    channels_last: bool = _key(False, "channels-last memory format (faster convolutions with bf16)")
    device: str = _key("auto", "auto, cpu, cuda or cuda:N")
    deterministic: bool = _key(True, "cuDNN deterministic, no autotuning: runs and resumes repeat exactly")
    sync_bn: bool = _key(False, "torchrun: batch-norm statistics over the global batch")
    compile: bool = _key(False, "torch.compile the model for training")
    log_test: bool = _key(False, "also log test accuracy per epoch (learning curves, benchmarks); never used for "
                          "selection")
    eval_batch_size: int = _key(1000, "batch of validation and test passes", within=_count(1, 1 << 20))
    tta: str = _key("none", "test-time augmentation of every reported accuracy: none, flip, shift, flip-shift",
                    choices="tta")
    log: str = _key("none", "per-epoch metrics also to tensorboard (<run>/tensorboard), wandb or mlflow (<run>/mlruns "
                    "unless MLFLOW_TRACKING_URI; extras of the same names)", choices="trackers")


@dataclass
class Config:
    seed: int = _key(0, "seeds the encoder, the data order and augmentation, and (unless head_seed) the class vectors",
                     within=_count(0, MAX_SEED))
    data: DataConfig = _key(DataConfig, "")
    model: ModelConfig = _key(ModelConfig, "")
    train: TrainConfig = _key(TrainConfig, "")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# Keys that say where the data lives, which device trains and where metrics go, not what is trained: a resumed run, or a
# finished run a sweep reuses, may differ in them.
PLACE_KEYS = ("data.data_dir", "train.device", "train.log")


@functools.cache
def fields() -> dict:
    """{"train.lr": dataclasses.Field, ...}: every key's field, by its dotted name, in the order of the docs."""
    out = {"seed": next(f for f in dataclasses.fields(Config) if f.name == "seed")}
    for section, cls in SECTIONS.items():
        out.update({f"{section}.{f.name}": f for f in dataclasses.fields(cls)})
    return out


def all_keys() -> list[str]:
    return list(fields())


def registries() -> dict:
    """The registries that word-valued keys choose from, each beside the code it names; imported here, on
    first validation, so that the schema itself loads without torch."""
    from .data import DATASETS
    from .data.pipeline import PADDING_MODES, TTA_VIEWS
    from .heads import INITS, SIMILARITIES, VECTORS
    from .models import ENCODERS, NECKS, POOLS, WHITENING
    from .models.zoo import LIBRARIES
    from .optim import OPTIMIZERS, PLATEAU_MODES, SCHEDULES
    from .trackers import TRACKERS

    return {"datasets": DATASETS, "padding_modes": PADDING_MODES, "tta": TTA_VIEWS, "inits": INITS,
            "similarities": SIMILARITIES, "vectors": VECTORS, "necks": NECKS, "pools": POOLS, "whitening": WHITENING,
            "encoders": (*ENCODERS, *(f"{library}:NAME" for library in LIBRARIES)), "optimizers": OPTIMIZERS,
            "schedules": SCHEDULES, "plateau_on": PLATEAU_MODES, "trackers": TRACKERS}


@functools.cache
def choices() -> dict:
    """{key: (accepted words, ...)} for every word-valued key: one place to validate them all."""
    found, named = {}, None
    for key, spec in fields().items():
        kind = spec.metadata.get("choices")
        if isinstance(kind, str):
            named = named or registries()
            found[key] = tuple(named[kind])
        elif kind is not None:
            found[key] = tuple(kind)
    return found


def _field(config: Config, key: str):
    """(the object holding `key`, its attribute name, its type); an unknown key is an error naming close ones."""
    known = fields()
    if key not in known or key in SECTIONS:
        close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else f"sections: seed, {', '.join(SECTIONS)}"
        raise UserError(f"unknown config key {shown(key)}; {hint} (every key: docs/config.md)")
    section, _, name = key.rpartition(".")
    target = getattr(config, section) if section else config
    return target, name, typing.get_type_hints(type(target))[name]


def coerce(key: str, value, kind):
    """Convert a YAML value to the field's type; strings from `--set` are parsed as YAML first."""
    words = fields()[key].metadata.get("words", ())
    if isinstance(value, str) and value.strip() in words:
        return value.strip()
    union = typing.get_origin(kind) is typing.Union
    optional = union and type(None) in typing.get_args(kind)
    base = next(t for t in typing.get_args(kind) if t is not type(None)) if union else kind
    if isinstance(value, str) and base is not str:
        value = _parse_text(key, value, base)
    if value is None and optional:
        return None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise UserError(f"{key} is too large a number, got {shown(value)}") from None
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[base]
    alternatives = "".join(f" or {word}" for word in words)
    raise UserError(f"{key} must be {name}{alternatives}{' or null' if optional else ''}, got {shown(value)}")


def _parse_text(key: str, value: str, base: type):
    try:
        parsed = yaml.load(value, Loader=files.BoundedLoader) if value.strip() else None  # noqa: S506
    except (yaml.YAMLError, RecursionError):
        parsed = value  # not YAML: reported by coerce as the wrong type
    files.check_tree_size(parsed, f"the value of {key}")
    if isinstance(parsed, str) and base is float:  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


def set_value(config: Config, key: str, value) -> None:
    target, name, kind = _field(config, key)
    setattr(target, name, coerce(key, value, kind))


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat_tree = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat_tree.update(flatten(value, f"{prefix}{key}."))
        else:
            flat_tree[f"{prefix}{key}"] = value
    return flat_tree


def parse_overrides(pairs: list[str]) -> dict:
    """['train.lr=0.1', ...] -> {'train.lr': '0.1', ...}; a pair without '=' is an error."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value (e.g. train.lr=0.05), got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def read_yaml(path) -> dict:
    """A config file: bounded, strict YAML (files.read_yaml) holding a mapping."""
    return config_tree(files.read_yaml(path, "config file"), path)


def config_tree(tree, path) -> dict:
    """A parsed config file's tree: a mapping of keys (an empty file is {})."""
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping of keys (seed, data, model, train)")
    return tree


def make_config(*layers: dict) -> Config:
    """Defaults, then each layer of nested or dotted overrides in order, then validation."""
    config = Config()
    for layer in layers:
        for key, value in flatten(layer).items():
            set_value(config, key, value)
    validate(config)
    return config


def saved_config(tree: dict, where, version: str | None = None) -> Config:
    """The Config a run folder or checkpoint saved; one that this version cannot read (written by another,
    `version` when known) is one line saying so."""
    try:
        return make_config(tree)
    except UserError as error:
        writer = f"fixedhead {one_line(version, 40)}" if version else "another version of fixedhead"
        raise UserError(f"{where} was written by {writer} and this one ({_version()}) cannot read its config: "
                        f"{error}") from None


def _version() -> str:
    from .version import VERSION

    return VERSION


def validate(config: Config) -> None:
    values = flat(config)
    for key, accepted in choices().items():
        if key == "model.arch" and _library_arch(values[key]):
            from .models import zoo

            zoo.check_name(values[key])
        elif key == "train.optimizer":
            from .optim.optimizers import check_optimizer

            check_optimizer(values[key])
        elif values[key] not in accepted:
            noun = "dataset" if key == "data.name" else key.split(".")[-1]
            raise UserError(f"unknown {noun} {shown(values[key])} ({key}); choose one of: {', '.join(accepted)}")
    for key, spec in fields().items():
        within = spec.metadata.get("within")
        if within is not None and not within[0](values[key]):
            raise UserError(f"{key} must be {within[1]}, got {shown(values[key])}")
    _check_rules(config)


def _library_arch(arch: str) -> bool:
    from .models import zoo

    return zoo.is_library_arch(arch)


def _check_rules(config: Config) -> None:
    """Rules that tie two or more keys together."""
    from .data import DATASETS, check_num_classes
    from .trackers import check_tracker

    flips = DATASETS[config.data.name].flip if config.data.flip is None else config.data.flip
    if "flip" in config.train.tta and not flips:
        raise UserError(f"train.tta={config.train.tta} mirrors test images, but {config.data.name} trains without "
                        "flips (data.flip); use train.tta=shift or none, or set data.flip=true")
    check_num_classes(config.data.name, config.data.num_classes)
    if (config.data.low_res_size is None) != (config.data.low_res_epochs == 0):
        raise UserError("data.low_res_size and data.low_res_epochs go together (the side the first epochs train at, "
                        f"and how many), got {config.data.low_res_size} and {config.data.low_res_epochs}")
    if config.data.low_res_epochs and config.data.low_res_epochs >= config.train.epochs:
        raise UserError(f"data.low_res_epochs must be below train.epochs ({config.train.epochs:g}): progressive resizing "
                        f"ends before training does (evaluation is full size), got {config.data.low_res_epochs}")
    if config.model.whiten_bias_epochs is not None and config.model.whiten == "none":
        raise UserError("model.whiten_bias_epochs stops training the whitened first convolution's bias; it needs "
                        "model.whiten init or frozen")
    if config.train.warmup_start > 0 and (config.train.schedule == "plateau" or config.train.warmup_epochs == 0):
        raise UserError(f"train.warmup_start={config.train.warmup_start} sets where the warm-up starts, but this run "
                        "has none (train.warmup_epochs=0 or train.schedule=plateau); give it a warm-up or leave it at 0")
    if config.model.weights is not None and config.model.pretrained:
        raise UserError("model.weights and model.pretrained both say where the encoder's weights come from; give one")
    if config.train.loss == "dot-regression" and (not config.model.fixed or config.train.mixup
                                                  or config.train.cutmix or config.train.class_weights != "none"):
        raise UserError("train.loss=dot-regression pulls features onto fixed class vectors: it needs model.fixed "
                        "true, and hard labels without weights (no mixup, cutmix or class_weights)")
    if config.train.fp16 and config.train.bf16 is not False:
        raise UserError(f"train.fp16 and train.bf16={config.train.bf16} both choose the autocast precision; set "
                        "train.bf16=false to train in float16, or leave train.fp16 false")
    if config.train.decoupled and config.train.optimizer not in ("sgd", "muon"):
        raise UserError(f"train.decoupled gives lr and weight_decay in airbench's SGD units; {config.train.optimizer} "
                        "takes them as they are: leave train.decoupled false")
    _check_vectors(config)
    check_tracker(config.train.log)


def _check_vectors(config: Config) -> None:
    """model.vectors bf16/regenerate: a fixed head whose logits are never formed whole (heads/many_classes.py)."""
    model, train = config.model, config.train
    if model.vectors == "stored":
        return
    conflicts = [text for text, bad in (
        ("model.fixed=true", not model.fixed), ("model.bias=false", model.bias),
        ("model.learn_scale=false", model.learn_scale), ("train.label_smoothing=0", train.label_smoothing),
        ("train.tta=none", train.tta != "none"),
        ("model.init=random", model.vectors == "regenerate" and model.init != "random")) if bad]
    if conflicts:
        raise UserError(f"model.vectors={model.vectors} (fixed vectors, blockwise loss) needs {', '.join(conflicts)}")


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def accepted(key: str) -> str:
    """What `key` accepts, in words (for --help and docs/config.md)."""
    spec, words = fields()[key], choices().get(key)
    if words:
        return ", ".join(map(str, words))
    if spec.metadata.get("within"):
        return spec.metadata["within"][1]
    if spec.type in ("bool", bool) or isinstance(spec.default, bool):
        return ", ".join(("true", "false", *spec.metadata.get("words", ())))
    return ""


def reference_table() -> str:
    """Every config key with its default, what it accepts and its help, as Markdown (docs/config.md)."""
    from .tables import markdown_table

    defaults = flat(Config())
    rows = [[f"`{key}`", f"`{defaults[key]}`", accepted(key), spec.metadata["help"]] for key, spec in fields().items()]
    return markdown_table(["key", "default", "accepted", "note"], rows)


def flat(config: Config) -> dict:
    """{"train.lr": 0.1, ...}: every key of a config by its dotted name."""
    return flatten(to_dict(config))


def differences(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between two configs."""
    flat_a, flat_b = flat(a), flat(b)
    return [key for key in flat_a if flat_a[key] != flat_b[key]]


def needs_validation(config: Config) -> bool:
    return config.train.schedule == "plateau" or config.train.select == "best_val"
