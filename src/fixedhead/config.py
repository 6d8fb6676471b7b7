"""Typed run configuration: dataclass defaults, YAML overrides, `key=value` overrides, validation.

Unknown keys and bad values raise UserError naming the key and the accepted values.
"""

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Optional

from . import files
from .accepted import CHOICES, RANGES, WORDS, coerce
from .data import DATASETS, check_num_classes
from .errors import UserError, shown
from .models import zoo
from .trackers import check_tracker


@dataclass
class DataConfig:
    name: str = "digits"  # the dataset (README: Datasets)
    data_dir: Optional[str] = None  # folder holding it (--data-dir)
    variant: Optional[str] = None  # cifar100: fine | coarse; cifar10.1: v6 | v4; None: the dataset's default
    num_classes: Optional[int] = None  # glyphs: how many characters (classes); None: 100
    image_size: Optional[int] = None  # resize every image to this side (imagefolder); None keeps the size
    val_fraction: float = 0.0  # held out of train; 0.1 is used when the schedule or selection needs one
    augment: bool = True  # random crops (and flips) of the training images
    crop_padding: Optional[int] = None  # None: image side // 8 (4 at 32 px)
    crop_padding_mode: str = "zeros"  # what the crop pads with: zeros (black) or reflect (mirrored edge; airbench)
    flip: Optional[bool] = None  # None: the dataset's default (no flips for digits)
    alternating_flip: bool = False  # mirror each image in every other epoch instead of at random
    low_res_size: Optional[int] = None  # progressive resizing: early epochs train on images scaled down to this side
    low_res_epochs: int = 0  # how many early epochs do (cheaper steps; evaluation stays full size)


@dataclass
class ModelConfig:
    arch: str = "fastnet"  # the encoder (README: Encoders), or a library model: timm:NAME, torchvision:NAME
    pretrained: bool = False  # timm:/torchvision: models: start from the library's pretrained weights
    similarity: str = "dot"  # dot or cosine: how features meet class vectors (the paper's word)
    fixed: bool = False  # class vectors frozen at their random draw (a buffer, never trained)
    scale: float = 1.0  # logit scale S: S cos(f, w) (cosine) or S f.w (dot); airbench: dot, 1/9
    learn_scale: bool = False  # learn S
    init: str = "random"  # how class vectors are drawn (README: Heads in any model)
    bias: bool = False  # a learned bias per class
    head_seed: Optional[int] = None  # None: the run's seed
    num_features: Optional[int] = None  # a linear layer to this many features after the encoder (2: the paper's pictures)
    pool: str = "avg"  # resnets only: "authors" is the reference code's fixed 4x4 average pool
    neck: str = "none"  # bn: batch norm after the encoder, so features take both signs (lifts the cosine ceiling)
    vectors: str = "stored"  # fixed heads with very many classes: bf16 or regenerate (from the seed), blockwise loss
    whiten: str = "none"  # first convolution: "init" patch-whitening filters of the training images, "frozen" too
    whiten_bias_epochs: Optional[int] = None  # the whitened conv's bias learns this many epochs only (airbench: 3)


@dataclass
class TrainConfig:
    epochs: float = 10.0  # passes over the training split
    images_seen: Optional[int] = None  # a training budget instead: epochs = round(budget / images per epoch), at least 1
    batch_size: int = 128  # the global batch (split across torchrun processes)
    lr: float = 0.1  # peak learning rate of SGD
    momentum: float = 0.9  # SGD momentum
    decoupled: bool = False  # lr and weight_decay in airbench's units: per 1,024 images, apart from momentum and each other
    bn_bias_lr: float = 1.0  # lr multiplier of batch-norm shifts, their weight decay divided by it (airbench: 64)
    nesterov: bool = True  # Nesterov momentum
    optimizer: str = "sgd"  # sgd; muon: conv filters take Muon steps (airbench94_muon), the rest SGD (batch-normed nets)
    muon_lr: float = 0.24  # Muon's step for the filters, each bank rescaled to norm sqrt(out) first (airbench94_muon: 0.24)
    muon_momentum: float = 0.6  # Muon's momentum (airbench94_muon: 0.6)
    weight_decay: float = 5e-4  # on encoder parameters; none on the head's bias or scale
    head_weight_decay: Optional[float] = None  # learned class vectors; None: same as weight_decay
    schedule: str = "linear"  # linear: warm-up then decay to 0; plateau: x0.2 after 3 epochs without better val loss
    plateau_on: str = "loss"  # what the plateau schedule watches on validation: loss (min) or acc (max, the authors')
    warmup_epochs: float = 1.0  # linear warm-up length (not for plateau)
    warmup_start: float = 0.0  # the warm-up starts at this fraction of the peak lr (airbench: 0.2)
    final_lr: float = 0.0  # the linear and cosine schedules end at this fraction of the peak lr (airbench: 0.07)
    label_smoothing: float = 0.0  # of the cross-entropy
    lookahead: int = 0  # sync slow and fast weights every this many steps (airbench: 5); 0: off
    select: str = "last"  # which weights are final: the last epoch's, or the best on validation
    bf16: typing.Union[bool, str] = False  # bf16 autocast; auto: on where it is fast (CUDA, CPUs with bf16 instructions)
    channels_last: bool = False  # channels-last memory format (faster convolutions with bf16)
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    deterministic: bool = True  # cuDNN deterministic, no autotuning: runs and resumes repeat exactly
    sync_bn: bool = False  # torchrun: batch-norm statistics over the global batch
    compile: bool = False  # torch.compile the model for training
    log_test: bool = False  # also log test accuracy per epoch (learning curves, benchmarks); never used for selection
    eval_batch_size: int = 1000  # batch of validation and test passes
    tta: str = "none"  # test-time augmentation of every reported accuracy: none, flip, shift, flip-shift
    log: str = "none"  # per-epoch metrics also to tensorboard (<run>/tensorboard) or wandb (extras of the same names)


@dataclass
class Config:
    seed: int = 0  # seeds the encoder, the data order and augmentation, and (unless head_seed) the class vectors
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Keys that say where the data lives, which device trains and where metrics go, not what is trained: a resumed run, or a
# finished run a sweep reuses, may differ in them.
PLACE_KEYS = ("data.data_dir", "train.device", "train.log")


# Keys that existed once: a config that still sets one gets a line saying why it went.
REMOVED = {
    "train.ema": "the weight average measured no gain on the CPU recipe (docs/speed.md) and no config used it",
}


# Renamed keys and values: a config that still uses an old name gets a line naming the new one, while
# configs saved by earlier versions (run folders, checkpoints) are read with the new names (upgrade).
RENAMED = {"model.head": "model.similarity", "model.feature_dim": "model.num_features"}
RENAMED_VALUES = {"train.schedule": {"onecycle": "linear"}}


def upgrade(tree: dict) -> dict:
    """A saved config (nested or dotted) in today's names, as a dotted mapping."""
    flat_tree = {RENAMED.get(key, key): value for key, value in flatten(tree).items()}
    for key, renames in RENAMED_VALUES.items():
        if isinstance(flat_tree.get(key), str) and flat_tree[key] in renames:
            flat_tree[key] = renames[flat_tree[key]]
    return flat_tree


def saved_config(tree: dict) -> Config:
    """The Config of a run folder or checkpoint, whichever version of fixedhead wrote it."""
    return make_config(upgrade(tree))


def _section(config: Config, key: str):
    if key in REMOVED:
        raise UserError(f"config key {key!r} was removed: {REMOVED[key]}; delete it from the config")
    if key in RENAMED:
        raise UserError(f"config key {key!r} is now {RENAMED[key]!r}; rename it in the config")
    parts = key.split(".")
    target = config
    for part in parts[:-1]:
        if part not in {f.name for f in dataclasses.fields(Config)} or part == "seed":
            raise UserError(f"unknown config key {shown(key)}; valid keys: {', '.join(all_keys())}")
        target = getattr(target, part)
    hints = typing.get_type_hints(type(target))
    if parts[-1] not in hints or isinstance(hints[parts[-1]], type) and dataclasses.is_dataclass(hints[parts[-1]]):
        raise UserError(f"unknown config key {shown(key)}; valid keys: {', '.join(all_keys())}")
    return target, parts[-1], hints[parts[-1]]


def all_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(Config):
        if section.name == "seed":
            keys.append("seed")
        else:
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(section.default_factory())]
    return keys


def set_value(config: Config, key: str, value) -> None:
    target, name, kind = _section(config, key)
    setattr(target, name, coerce(key, value, kind))


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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
    tree = files.read_yaml(path, "config file")
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


def validate(config: Config) -> None:
    values = flat(config)
    for key, choices in CHOICES.items():
        if key == "model.arch" and zoo.is_library_arch(values[key]):
            zoo.check_name(values[key])
            continue
        if values[key] in RENAMED_VALUES.get(key, {}):
            raise UserError(f"{key} {values[key]!r} is now {RENAMED_VALUES[key][values[key]]!r}")
        if values[key] not in choices:
            noun = "dataset" if key == "data.name" else key.split(".")[-1]
            raise UserError(f"unknown {noun} {shown(values[key])} ({key}); choose one of: {', '.join(choices)}")
    for key, (ok, accepted) in RANGES.items():
        if not ok(values[key]):
            raise UserError(f"{key} must be {accepted}, got {shown(values[key])}")
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
    _check_vectors(config)
    check_tracker(config.train.log)


def _check_vectors(config: Config) -> None:
    """model.vectors bf16/regenerate: a fixed head whose logits are never formed whole (many_classes.py)."""
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


def _field_notes() -> dict:
    """The comment beside each field in this file's dataclasses: {"data.variant": "cifar100: ..."}."""
    notes = {}
    for prefix, cls in (("", Config), ("data.", DataConfig), ("model.", ModelConfig), ("train.", TrainConfig)):
        for line in inspect.getsource(cls).splitlines():
            match = re.match(r"\s+(\w+):[^#]*#\s*(.*)", line)
            if match:
                notes[f"{prefix}{match[1]}"] = match[2]
    return notes


def reference_table() -> str:
    """Every config key with its default, what it accepts and its note, as Markdown (docs/config.md)."""
    from .tables import markdown_table

    notes, rows = _field_notes(), []
    for key, default in flat(Config()).items():
        accepted = (", ".join(map(str, CHOICES[key])) if key in CHOICES else RANGES[key][1] if key in RANGES
                    else ", ".join(("true", "false") + WORDS.get(key, ())) if isinstance(default, bool) else "")
        rows.append([f"`{key}`", f"`{default}`", accepted, notes.get(key, "")])
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
