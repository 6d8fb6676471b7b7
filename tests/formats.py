"""Writers of tiny datasets in the exact on-disk formats of the real ones (used by the tests)."""

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _images(rng, n, size=32):
    return rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def write_cifar10(root: Path, per_batch=4, seed=0) -> dict:
    """cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta; returns the pixels written."""
    rng, folder, written = np.random.default_rng(seed), root / "cifar-10-batches-py", {}
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        images = _images(rng, per_batch)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": name, "labels": labels, "data": images.reshape(per_batch, 3072), "filenames": []}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (images, labels)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def write_cifar100(root: Path, n=6, seed=0) -> dict:
    rng, folder, written = np.random.default_rng(seed), root / "cifar-100-python", {}
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        images = _images(rng, n)
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        batch = {"data": images.reshape(n, 3072), "fine_labels": fine, "coarse_labels": coarse}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=4))
        written[split] = (images, fine, coarse)
    meta = {"fine_label_names": [f"fine{k}" for k in range(100)], "coarse_label_names": [f"coarse{k}" for k in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))
    return written


def write_cifar101(root: Path, n=12, version="v6", seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / f"cifar10.1_{version}_data.npy", images)
    np.save(root / f"cifar10.1_{version}_labels.npy", labels)
    return images, labels


def write_stl10(root: Path, n=3, seed=0) -> dict:
    """stl10_binary/: images as (N, 3, 96, 96) column-major bytes (the W axis first), labels 1-based."""
    rng, folder, written = np.random.default_rng(seed), root / "stl10_binary", {}
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        images = _images(rng, n, 96)  # (N, C, H, W) as a person sees them
        labels = rng.integers(1, 11, n).astype(np.uint8)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # stored column-major
        labels.tofile(folder / f"{split}_y.bin")
        written[split] = (images, labels)
    names = "airplane bird car cat deer dog horse monkey ship truck"
    (folder / "class_names.txt").write_text("\n".join(names.split()) + "\n")
    return written


def write_tinyimagenet(root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class=2, seed=0) -> dict:
    """tiny-imagenet-200/: wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images + annotations."""
    rng, folder = np.random.default_rng(seed), root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {k}, other name\n" for k, w in enumerate(wnids)))
    decoded = {"train": [], "test": []}
    for k, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for j in range(per_class):
            path = folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
            decoded["train"].append((np.asarray(Image.open(path).convert("RGB")), k))
    lines = []
    for j, k in enumerate([2, 0, 1, 2]):  # val order follows the annotation file, not the classes
        path = folder / "val" / "images" / f"val_{j}.JPEG"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert("L").save(path)  # a grey one
        lines.append(f"val_{j}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
        decoded["test"].append((np.asarray(Image.open(path).convert("RGB")), k))
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return decoded


def write_idx(folder: Path, split: str = "train", n: int = 5, gz: bool = True, seed: int = 0, num_classes: int = 10):
    """MNIST-style IDX files: big-endian header (magic 0x00000803 / 0x00000801, then the sizes), raw bytes."""
    import gzip

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    prefix = "train" if split == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array, dims in (("images", images, 3), ("labels", labels, 1)):
        header = bytes([0, 0, 8, dims]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
        name = folder / f"{prefix}-{kind}-idx{dims}-ubyte"
        payload = header + array.tobytes()
        if gz:
            with gzip.open(f"{name}.gz", "wb") as file:
                file.write(payload)
        else:
            name.write_bytes(payload)
    return images, labels
