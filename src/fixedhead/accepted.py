"""What each config key accepts: the choices of the word-valued keys, the ranges of the numbers, the
words some keys take besides their type, and the conversion of a YAML or `--set` value to a field's type.
config.py applies them; cli.py prints them in `--help`; docs/config.md's table is made from them.
"""

import math
import typing

import yaml

from . import files
from .data import DATASETS
from .data.pipeline import PADDING_MODES
from .errors import UserError, shown
from .heads.class_head import INITS, SIMILARITIES
from .heads.many_classes import VECTORS
from .models.classifier import ENCODERS, NECKS
from .trackers import TRACKERS

SCHEDULES = ("linear", "cosine", "step", "constant", "plateau")
SELECTIONS = ("last", "best_val")
TTA_MODES = ("none", "flip", "shift", "flip-shift")  # views: evaluate.tta_views
WHITEN = ("none", "init", "frozen")


CHOICES = {
    "data.name": tuple(DATASETS),
    "data.crop_padding_mode": PADDING_MODES,
    "model.arch": (*ENCODERS, "timm:NAME", "torchvision:NAME"),
    "model.similarity": SIMILARITIES,
    "model.init": tuple(INITS),
    "model.pool": ("avg", "authors"),
    "train.schedule": SCHEDULES,
    "train.optimizer": ("sgd", "muon"),
    "train.select": SELECTIONS,
    "train.plateau_on": ("loss", "acc"),
    "train.tta": TTA_MODES,
    "model.whiten": WHITEN,
    "model.vectors": VECTORS,
    "model.neck": NECKS,
    "train.log": TRACKERS,
}

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


# key: (test, what is accepted)
RANGES = {
    "seed": _count(0, MAX_SEED),
    "data.image_size": _count(8, 1024, optional=True),
    "data.val_fraction": _within(0, 1, high_open=True),
    "data.crop_padding": _count(0, 256, optional=True),
    "data.low_res_size": _count(4, 1024, optional=True),
    "data.low_res_epochs": _count(0, 100_000, note=" (0: off)"),
    "model.scale": _within(0, 10_000, low_open=True),
    "model.head_seed": _count(0, MAX_SEED, optional=True),
    "model.whiten_bias_epochs": _count(0, 100_000, optional=True),
    "model.num_features": _count(1, 65536, optional=True),
    "data.num_classes": _count(2, 100_000, optional=True, note=" (glyphs only)"),
    "train.epochs": _within(0, 100_000, note=" (a fraction ends the last epoch early)"),
    "train.images_seen": _count(1, 10**12, optional=True),
    "train.batch_size": _count(1, 1 << 20),
    "train.eval_batch_size": _count(1, 1 << 20),
    "train.lr": _within(0, 1000, low_open=True),
    "train.momentum": _within(0, 1, high_open=True),
    "train.muon_lr": _within(0, 1000, low_open=True),
    "train.muon_momentum": _within(0, 1, high_open=True),
    "train.weight_decay": _within(0, 1),
    "train.head_weight_decay": _within(0, 1, optional=True),
    "train.warmup_epochs": _within(0, 100_000),
    "train.final_lr": _within(0, 1),
    "train.warmup_start": _within(0, 1),
    "train.bn_bias_lr": _within(0, 10_000, low_open=True),
    "train.label_smoothing": _within(0, 1, high_open=True),
    "train.lookahead": _count(0, 1_000_000, note=" (0: off)"),
}


# Keys that take a word as well as their type: train.bf16 is true, false or auto.
WORDS = {"train.bf16": ("auto",)}


def coerce(key: str, value, kind):
    """Convert a YAML value to the field's type; strings from `--set` are parsed as YAML first."""
    if isinstance(value, str) and value.strip() in WORDS.get(key, ()):
        return value.strip()
    union = typing.get_origin(kind) is typing.Union
    optional = union and type(None) in typing.get_args(kind)
    base = next(t for t in typing.get_args(kind) if t is not type(None)) if union else kind
    if isinstance(value, str) and base is not str:
        try:
            value = yaml.load(value, Loader=files.BoundedLoader) if value.strip() else None  # noqa: S506
        except (yaml.YAMLError, RecursionError):
            pass  # not YAML: reported below as the wrong type
        files.check_tree_size(value, f"the value of {key}")
        if isinstance(value, str) and base is float:  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
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
    words = "".join(f" or {word}" for word in WORDS.get(key, ()))
    raise UserError(f"{key} must be {name}{words}{' or null' if optional else ''}, got {shown(value)}")
