"""From a data config to batch loaders: load splits, carve validation, compute normalisation."""

from __future__ import annotations

import torch

from ..errors import UserError
from . import DATASETS, load_split
from .pipeline import BatchLoader, channel_stats, long_tail, split_validation


def prepare(data_cfg, *, seed: int, batch_size: int, eval_batch_size: int, device, channels_last: bool = False,
            with_val: bool = False, given: dict | None = None) -> dict:
    """Training loaders: `train`, `test` and maybe `val`, plus `classes`, `mean`, `std`, `in_channels`,
    `image_size`. Normalisation statistics come from the training images after the validation hold-out.
    `val` is carved from train with `data_cfg.val_fraction` (0.1 when that is 0 and `with_val`).
    `given` ({"train", "test"}: ImageSets) replaces the dataset the config names (fit's Python datasets).
    `train_counts`: the training images per class (after the hold-out and any long tail), counted once here
    for the class weights, the logit adjustment and final.json.
    """
    train = given["train"].resized(data_cfg.image_size) if given else load_split(data_cfg, "train")
    if len(train.classes) < 2:
        raise UserError(f"dataset {data_cfg.name!r} has {len(train.classes)} class; a classifier needs two or more")
    fraction = data_cfg.val_fraction or (0.1 if with_val else 0.0)
    train_index, val_index = split_validation(len(train), fraction, train.labels, seed) if fraction else (None, None)
    if train_index is not None and val_index is not None and (len(train_index) == 0 or len(val_index) == 0):
        raise UserError(f"data.val_fraction {fraction} leaves {len(train_index)} training and {len(val_index)} "
                        f"validation images of {len(train)}; choose a fraction that leaves both non-empty")
    if data_cfg.imbalance != 1:  # after the validation hold-out: validation stays balanced
        kept = long_tail(train.labels if train_index is None else train.labels[train_index], len(train.classes),
                         data_cfg.imbalance, data_cfg.imbalance_type, data_cfg.imbalance_seed)
        train_index = kept if train_index is None else train_index[kept]
    train_images = train.images if train_index is None else train.images[train_index]
    train_labels = train.labels if train_index is None else train.labels[train_index]
    mean, std = channel_stats(train_images)
    side = train.images.shape[-1]
    padding = data_cfg.crop_padding if data_cfg.crop_padding is not None else max(1, side // 8)
    if data_cfg.crop_padding_mode == "reflect" and data_cfg.augment and padding >= side:
        raise UserError(f"data.crop_padding_mode=reflect mirrors the image's edge, so data.crop_padding must be "
                        f"below the image side ({side} px), got {padding}; lower it or use zeros")
    if data_cfg.low_res_size is not None and data_cfg.low_res_size >= side:
        raise UserError(f"data.low_res_size scales training images down, so it must be below their side ({side} px), "
                        f"got {data_cfg.low_res_size}")
    flip = DATASETS[data_cfg.name].flip if data_cfg.flip is None else data_cfg.flip
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last)
    out = {"classes": train.classes, "mean": mean, "std": std, "in_channels": train.images.shape[1],
           "image_size": side, "val_fraction": fraction,
           "train_counts": torch.bincount(train_labels, minlength=len(train.classes)).tolist()}
    out["train"] = BatchLoader(train_images, train_labels, batch_size, shuffle=True,
                               drop_last=len(train_labels) > batch_size,
                               crop_padding=padding if data_cfg.augment else 0, flip=flip and data_cfg.augment,
                               alternating_flip=data_cfg.alternating_flip, crop_padding_mode=data_cfg.crop_padding_mode,
                               low_res=(data_cfg.low_res_size, data_cfg.low_res_epochs) if data_cfg.low_res_epochs else None,
                               **common)
    if val_index is not None:
        out["val"] = BatchLoader(train.images[val_index], train.labels[val_index], eval_batch_size, **common)
    test = given["test"].resized(data_cfg.image_size) if given else load_split(data_cfg, "test")
    out["test"] = BatchLoader(test.images, test.labels, eval_batch_size, **common)
    return out
