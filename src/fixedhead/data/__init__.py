"""Dataset registry: `load(name, root, split)` returns an ImageSet of uint8 images (N, C, H, W).

Every file-based dataset is decoded once into the array cache (see cache.py), keyed by its source
files, so a second start reads memory-mapped arrays instead of decoding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from . import cache, formats, glyphs, idx, mini
from .imagefolder import decode_images, list_classes, list_images

SPLITS = ("train", "test")


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def resized(self, side: int | None) -> ImageSet:
        """These images at side x side (bilinear, antialiased when shrinking); itself where side is None or theirs."""
        if side is None or tuple(self.images.shape[-2:]) == (side, side):
            return self
        return ImageSet(torch.from_numpy(_resize(self.images.numpy(), side)), self.labels, self.classes)


def _digits(root, split, variant):
    """scikit-learn's 8x8 digits (1797 images), upsampled x2 to 16 px; fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    train, test = train_test_split(np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target)
    index = train if split == "train" else test
    x = images[index][:, None].repeat(2, axis=2).repeat(2, axis=3)  # nearest x2 -> (N, 1, 16, 16)
    return {"images": x, "labels": digits.target[index].astype(np.int64), "classes": [str(d) for d in range(10)]}


def imagefolder_split(root: Path, split: str) -> Path:
    """The folder of an image folder's split: train/, and for the test split test/, or val/ where there is no
    test/ (timm's and ImageNet's layout: the labelled val/ is what is scored)."""
    if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
        return root / "val"
    if split == "test" and not (root / "test").is_dir():
        raise UserError(f"expected {root}/test/ (or {root}/val/) beside {root}/train/, each holding one sub-folder "
                        "of images per class")
    return root / split


def _imagefolder_sources(root: Path, split: str, variant) -> list[Path]:
    return list_images(imagefolder_split(root, split), list_classes(root / "train"))[0]


def _imagefolder(root: Path, split: str, variant, image_size=None) -> dict:
    classes = list_classes(root / "train")
    folder = imagefolder_split(root, split)
    list_classes(folder)  # a clear error when the split folder is missing or empty
    paths, labels = list_images(folder, classes)
    return {"images": decode_images(paths, image_size), "labels": np.asarray(labels, np.int64), "classes": classes}


@dataclass(frozen=True)
class DatasetSpec:
    read: Callable  # (folder, split, variant) -> {"images", "labels", "classes"}
    sources: Callable | None  # (folder, split, variant) -> files whose change invalidates the cache
    folder: str | None = None  # sub-folder of --data-dir that holds the files (None: --data-dir itself)
    locate: Callable | None = None  # (root) -> folder or None, for datasets with several usual places
    flip: bool = True  # horizontal flips keep the label
    variants: tuple = (None,)  # accepted data.variant values; the first is the default
    splits: tuple = SPLITS
    howto: str = ""
    generated: bool = False  # made here: read(split, num_classes), sources(split, num_classes) -> (files, key text)
    describe: Callable | None = None  # (num_classes) -> what `data info` adds (generated datasets)
    # (data config) -> (train images, test images, channels, side, classes) of the published set: what a plan
    # needs without reading the files (experiments.cost); None where only the files tell
    size: Callable | None = None


def _published(train: int, test: int, channels: int, side: int, classes: int) -> Callable:
    return lambda data_cfg: (train, test, channels, side, classes)


DATASETS = {
    "digits": DatasetSpec(_digits, None, flip=False, size=_published(1257, 540, 1, 16, 10)),
    "imagefolder": DatasetSpec(_imagefolder, _imagefolder_sources,
                               howto="lay out DIR/train/<class>/<images> and DIR/test/<class>/<images> (or val/)"),
    "cifar10": DatasetSpec(formats.read_cifar10, formats.cifar10_files, "cifar-10-batches-py",
                           size=_published(50_000, 10_000, 3, 32, 10)),
    "cifar100": DatasetSpec(formats.read_cifar100, formats.cifar100_files, "cifar-100-python",
                            variants=("fine", "coarse"),
                            size=lambda d: (50_000, 10_000, 3, 32, 20 if d.variant == "coarse" else 100)),
    "cifar10.1": DatasetSpec(formats.read_cifar101, formats.cifar101_files, variants=("v6", "v4"), splits=("test",)),
    "stl10": DatasetSpec(formats.read_stl10, formats.stl10_files, "stl10_binary", size=_published(5_000, 8_000, 3, 96, 10)),
    "tinyimagenet": DatasetSpec(formats.read_tinyimagenet, formats.tinyimagenet_files, "tiny-imagenet-200",
                                 size=_published(100_000, 10_000, 3, 64, 200)),
    "fashion-mnist": DatasetSpec(lambda f, s, v: idx.read_split(f, s, idx.FASHION_CLASSES),
                                 lambda f, s, v: [idx.idx_file(f, s, "images"), idx.idx_file(f, s, "labels")],
                                 locate=lambda root: idx.locate("fashion-mnist", root),
                                 howto="get it with: apt-get install dataset-fashion-mnist (it lands in "
                                       "/usr/share/datasets/fashion-mnist/), or fixedhead data download "
                                       "fashion-mnist --data-dir DIR",
                                 size=_published(60_000, 10_000, 1, 28, 10)),
    mini.NAME: DatasetSpec(lambda f, s, v: mini.read_split(s), None,
                           size=_published(10 * mini.PER_CLASS["train"], 10 * mini.PER_CLASS["test"], 1, 28, 10)),
    glyphs.NAME: DatasetSpec(glyphs.read_split, glyphs.cache_key, flip=False, generated=True, describe=glyphs.describe,
                             size=glyphs.size),
    "python": DatasetSpec(lambda f, s, v: _given_from_python(), None),
    "mnist": DatasetSpec(lambda f, s, v: idx.read_split(f, s, [str(d) for d in range(10)]),
                         lambda f, s, v: [idx.idx_file(f, s, "images"), idx.idx_file(f, s, "labels")],
                         flip=False, locate=lambda root: idx.locate("mnist", root),
                         size=_published(60_000, 10_000, 1, 28, 10)),
}


def howto(name: str) -> str:
    """How to get a dataset that is missing."""
    return DATASETS[name].howto or f"get it with: fixedhead data download {name} --data-dir DIR"


def dataset_folder(name: str, root) -> Path:
    """The folder holding a dataset's files: DIR/<its folder> or DIR itself when it is that folder."""
    spec = DATASETS[name]
    if spec.locate is not None:
        found = spec.locate(root)
        if found is None:
            places = ", ".join(str(p) for p in idx.candidates(name, root))
            raise UserError(f"dataset {name!r} not found in {places}; {howto(name)}")
        return found
    if root is None:
        raise UserError(f"dataset {name!r} needs --data-dir DIR; {howto(name)}")
    root = Path(root).expanduser()
    if spec.folder and (root / spec.folder).is_dir():
        return root / spec.folder
    if root.is_dir():
        return root
    raise UserError(f"data folder {root} does not exist; {howto(name)}")


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.nn.functional.interpolate(torch.from_numpy(np.asarray(images)).float(), size=(size, size),
                                        mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).byte().numpy()


def _source(name: str, root, split: str, image_size: int | None, variant: str | None,
            num_classes: int | None) -> tuple[str | None, Callable]:
    """Check a request for one split and find its files, reading no image: (cache key or None, read)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    check_num_classes(name, num_classes)
    if split not in spec.splits:
        raise UserError(f"dataset {name!r} has no split {split!r}; it has: {', '.join(spec.splits)}")
    variant = spec.variants[0] if variant is None else variant
    if variant not in spec.variants:
        accepted = ", ".join(str(v) for v in spec.variants)
        raise UserError(f"dataset {name!r} has no variant {variant!r}; accepted: {accepted}")
    if spec.generated and spec.sources is not None:
        paths, key = spec.sources(num_classes, split)
        return cache.source_key(paths, key), lambda: spec.read(split, num_classes)
    if spec.sources is None:
        return None, lambda: spec.read(root, split, variant)
    folder = dataset_folder(name, root)
    read = (lambda: spec.read(folder, split, variant, image_size)) if name == "imagefolder" else \
        (lambda: spec.read(folder, split, variant))
    try:
        return cache.source_key(spec.sources(folder, split, variant), f"{name}|{split}|{variant}|{image_size}"), read
    except UserError as error:
        if str(error).startswith("missing file"):
            raise UserError(f"{error}; {howto(name)}") from None
        raise


def load(name: str, root=None, split: str = "train", image_size: int | None = None, variant: str | None = None,
         num_classes: int | None = None) -> ImageSet:
    """Load one split of a registered dataset as uint8 tensors (decoded or generated once, then cached);
    `num_classes` is for datasets generated with a chosen number of classes (glyphs)."""
    key, read = _source(name, root, split, image_size, variant, num_classes)
    arrays = read() if key is None else cache.cached(key, read)
    images = arrays["images"]
    if len(images) == 0:
        raise UserError(f"the {split} split of dataset {name!r} holds no images")
    if image_size is not None and images.shape[-1] != image_size:
        images = _resize(images, image_size)
    return ImageSet(torch.from_numpy(np.array(images)), torch.from_numpy(np.asarray(arrays["labels"], np.int64)),
                    list(arrays["classes"]))


def check_available(data_cfg) -> None:
    """Raise the UserError that loading would raise for a missing or misnamed dataset (files absent, wrong
    folder, variant, split or number of classes), reading no image: a sweep checks this before its first run."""
    for split in DATASETS[data_cfg.name].splits if data_cfg.name in DATASETS else SPLITS:
        _source(data_cfg.name, data_cfg.data_dir, split, data_cfg.image_size, data_cfg.variant, data_cfg.num_classes)


PYTHON = "python"  # data.name of a run whose data fit() was given as torch Datasets
MAX_GIVEN = 10_000_000  # items one given Dataset may hold


def _given_from_python():
    raise UserError("this run's data was given from Python (fit(config, run, train_data=..., test_data=...)); "
                    "resume it the same way, and measure it with fixedhead.analyze(model, loader)")


def from_dataset(dataset, classes: list[str] | None = None, what: str = "train_data") -> ImageSet:
    """A torch Dataset of (image, label) items, or of {"image"/"img", "label"/"labels"} mappings (a Hugging
    Face `datasets` image dataset), as an ImageSet: images are PIL images, uint8 arrays or tensors (H, W),
    (H, W, C) for arrays and PIL, (C, H, W) for tensors; float tensors must be in [0, 1] (torchvision's
    ToTensor; fixedhead normalises them itself), all of one size. Class names: `classes`, else the
    dataset's `classes` attribute, else its label feature's `names` (Hugging Face), else the numbers."""
    import numpy as np

    if not hasattr(dataset, "__len__") or not 0 < len(dataset) <= MAX_GIVEN:
        raise UserError(f"{what} must be a Dataset with 1 to {MAX_GIVEN:,} items (a map-style torch Dataset)")
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = _item(dataset[index], what, index)
        images.append(_as_uint8_chw(image, what, index))
        labels.append(int(label))
    if len({tuple(x.shape) for x in images}) > 1:
        raise UserError(f"{what} holds images of several sizes (e.g. {tuple(images[0].shape)}); resize them to one")
    names = (classes or [str(c) for c in getattr(dataset, "classes", None) or _feature_names(dataset)]
             or [str(c) for c in range(max(labels) + 1)])
    if min(labels) < 0 or max(labels) >= len(names):
        raise UserError(f"{what} has labels outside 0..{len(names) - 1} (its {len(names)} classes)")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), list(names))


def _item(item, what: str, index: int) -> tuple:
    if isinstance(item, dict):
        image = next((item[k] for k in ("image", "img", "pixel_values") if k in item), None)
        label = next((item[k] for k in ("label", "labels") if k in item), None)
        if image is None or label is None:
            raise UserError(f"{what}[{index}] is a mapping without an image ('image', 'img') or a label ('label') "
                            f"key; it has {', '.join(map(str, list(item)[:8]))}")
        return image, label
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise UserError(f"{what}[{index}] is not an (image, label) pair nor a mapping with image and label")
    return tuple(item)


def _feature_names(dataset) -> list:
    """A Hugging Face dataset's class names (its label feature's `names`), or []."""
    features = getattr(dataset, "features", None) or {}
    label = next((features[k] for k in ("label", "labels") if k in features), None) if hasattr(features, "keys") else None
    return list(getattr(label, "names", None) or [])


def _as_uint8_chw(image, what: str, index: int):
    import numpy as np

    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.is_floating_point():
            if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
                raise UserError(f"{what}[{index}] is a float image outside [0, 1] (normalised already?); give images "
                                "in [0, 1] or uint8: fixedhead normalises them with the training set's statistics")
            tensor = (tensor * 255).round()
        chw = tensor.to(torch.uint8).numpy()
        return chw[None] if chw.ndim == 2 else chw
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise UserError(f"{what}[{index}] is {type(image).__name__} {array.dtype} {array.shape}; give PIL images, "
                        "uint8 arrays or image tensors")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def load_split(data_cfg, split: str) -> ImageSet:
    """One split of the dataset a run's data config names (name, folder, image size, variant)."""
    return load(data_cfg.name, data_cfg.data_dir, split, data_cfg.image_size, data_cfg.variant, data_cfg.num_classes)


def made(data_cfg) -> dict:
    """How a generated dataset was made (for the run's meta), {} for the others."""
    spec = DATASETS[data_cfg.name]
    return {"dataset_made": spec.describe(data_cfg.num_classes)} if spec.describe else {}


def check_num_classes(name: str, num_classes: int | None) -> None:
    """data.num_classes chooses the classes of a generated dataset; every other dataset has its own."""
    if num_classes is not None and not DATASETS[name].generated:
        raise UserError(f"data.num_classes is for generated datasets ({', '.join(generated_datasets())}); "
                        f"{name!r} has its own classes")


def reads_files(name: str) -> bool:
    """Whether a dataset is read from files (--data-dir); digits, the embedded subset and glyphs are not."""
    spec = DATASETS[name]
    return spec.sources is not None and not spec.generated


def generated_datasets() -> list[str]:
    return [name for name, spec in DATASETS.items() if spec.generated]


def load_folder_onto(path, classes: list[str], image_size: int | None = None) -> ImageSet:
    """A test-only folder `PATH/<class name>/<images>` whose class names are mapped onto `classes`
    (a training set's). Classes missing from the folder are allowed; unknown ones are an error."""
    path = Path(path)
    list_classes(path)
    paths, labels = list_images(path, classes)
    key = cache.source_key(paths, f"folder|{classes}|{image_size}")
    arrays = cache.cached(key, lambda: {"images": decode_images(paths, image_size),
                                        "labels": np.asarray(labels, np.int64), "classes": classes})
    images = arrays["images"]
    return ImageSet(torch.from_numpy(np.array(images)), torch.from_numpy(np.asarray(arrays["labels"])), list(classes))


def info(name: str, root=None, variant: str | None = None, num_classes: int | None = None, data_cfg=None) -> dict:
    """Split sizes, image size, classes and per-channel mean/std of the training split, its images per class
    (long-tailed as `data_cfg` says, if it does), and, for a generated dataset, how it was made."""
    from .pipeline import channel_stats

    spec = DATASETS.get(name)
    splits = {split: load(name, root, split, variant=variant, num_classes=num_classes)
              for split in (spec.splits if spec else SPLITS)}
    first = next(iter(splits.values()))
    mean, std = channel_stats(splits.get("train", first).images)
    return {
        "name": name, "variant": variant or (spec.variants[0] if spec else None),
        "splits": {split: len(s) for split, s in splits.items()},
        "image_size": list(first.images.shape[1:]), "num_classes": len(first.classes), "classes": first.classes,
        "mean": mean, "std": std, "stats_split": "train" if "train" in splits else next(iter(splits)),
        **({"made": spec.describe(num_classes)} if spec and spec.describe else {}),
        "train_per_class": train_counts(splits.get("train", first).labels, data_cfg),
    }


def train_counts(labels: torch.Tensor, data_cfg=None) -> dict:
    """{class index: training images}, as data.imbalance (and its type and seed) in `data_cfg` leave them;
    over the whole training split (a run holds validation out first)."""
    from .pipeline import long_tail

    num_classes = int(labels.max()) + 1
    kept = labels if data_cfg is None or data_cfg.imbalance == 1 else labels[long_tail(
        labels, num_classes, data_cfg.imbalance, data_cfg.imbalance_type, data_cfg.imbalance_seed)]
    return {str(c): n for c, n in enumerate(torch.bincount(kept, minlength=num_classes).tolist())}
