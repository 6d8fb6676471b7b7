"""Batches from uint8 tensors kept on the training device: crop, flip and normalise whole batches; the views
of test-time augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

PADDING_MODES = ("zeros", "reflect")  # what a random crop pads with (torch's names; reflect: airbench)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.double().div_(255).transpose(0, 1).flatten(1)  # (C, n*H*W)
        total += x.sum(1)
        total_sq += x.square().sum(1)
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def held_out(count: int, fraction: float) -> int:
    """Images of one class that validation takes (split_validation's rule)."""
    return int(round(count * fraction))


def batches_per_epoch(count: int, batch_size: int, drop_last: bool) -> int:
    """Batches an epoch of `count` images makes (BatchLoader's rule: a last partial batch unless dropped)."""
    full, rest = divmod(count, batch_size)
    return full + (0 if drop_last or rest == 0 else 1)


def split_validation(num_items: int, fraction: float, labels: torch.Tensor, seed: int):
    """Stratified (train_index, val_index) with about `fraction` of each class held out."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in labels.unique().tolist():
        index = (labels == label).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        cut = held_out(len(index), fraction)
        val.append(index[:cut])
        train.append(index[cut:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def long_tail_counts(available: list[int], ratio: float, kind: str) -> list[int]:
    """Training images kept per class for a long-tailed version with largest / smallest = `ratio`: exp (Cao
    et al. 2019, LDAM's protocol) keeps n_max * ratio ** (-i / (C - 1)) of class i, step keeps n_max for the
    first half of the classes and n_max / ratio for the rest (both truncated to integers, as that code
    does). n_max is the smallest class's count, so that every class can give what it is asked for."""
    if ratio == 1:
        return list(available)
    n_max, num_classes = min(available), len(available)
    if kind == "exp":
        counts = [int(n_max * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]
    else:
        counts = [n_max if i < num_classes // 2 else int(n_max / ratio) for i in range(num_classes)]
    if min(counts) < 1:
        raise UserError(f"data.imbalance={ratio:g} ({kind}) leaves the rarest class with {min(counts)} training images "
                        f"of the {n_max} a class has here; choose a ratio of at most {n_max:g}")
    return counts


def long_tail(labels: torch.Tensor, num_classes: int, ratio: float, kind: str, seed: int) -> torch.Tensor:
    """Sorted indices of a long-tailed subset of these training labels (long_tail_counts), each class's
    images taken from a permutation seeded by `seed` alone (data.imbalance_seed), so that every run of an
    experiment trains on the same images."""
    generator = torch.Generator().manual_seed(seed)
    members = [(labels == c).nonzero().flatten() for c in range(num_classes)]
    counts = long_tail_counts([len(m) for m in members], ratio, kind)
    kept = [m[torch.randperm(len(m), generator=generator)[:n]] for m, n in zip(members, counts)]
    return torch.cat(kept).sort().values


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator, mode: str = "zeros") -> torch.Tensor:
    """Pad by `padding` (zeros, or the edge mirrored: reflect), then cut each image at its own random
    offset (B, C, H, W) -> same."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode="constant" if mode == "zeros" else mode)
    dy, dx = (torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)).to(images.device)
    rows = (dy[:, None] + torch.arange(height, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(width, device=images.device))[:, None, :]  # (B, 1, W)
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    return padded[batch_index, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def flip_where(images: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Mirror the images (B, C, H, W) whose entry of the boolean mask (B,) is set."""
    return torch.where(mirrored.to(images.device)[:, None, None, None], images.flip(3), images)


class BatchLoader:
    """Iterates (inputs float (B, C, H, W), labels (B,)) over uint8 images held on `device`.

    Each epoch draws its order and augmentation from a generator seeded by (seed, epoch), so an
    epoch is the same whether or not the run was interrupted before it.
    """

    def __init__(self, images, labels, batch_size, mean, std, device="cpu", shuffle=False,
                 crop_padding=0, flip=False, drop_last=False, channels_last=False, alternating_flip=False,
                 crop_padding_mode="zeros", low_res: tuple[int, int] | None = None):
        self.images, self.labels = images.to(device), labels.to(device)
        self.alternating_flip = alternating_flip
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.crop_padding, self.flip, self.channels_last = crop_padding, flip, channels_last
        self.crop_padding_mode = crop_padding_mode
        self.low_res = low_res  # (side, epochs): the first epochs' images scaled down to side x side
        self.set_statistics(mean, std)

    def set_statistics(self, mean, std) -> None:
        """The per-channel mean and std (on the [0, 1] scale) that normalise() uses."""
        device = self.images.device
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size, self.drop_last)

    def normalise(self, images: torch.Tensor, side: int | None = None) -> torch.Tensor:
        """Floats of zero mean and unit variance per channel; with `side`, scaled down to side x side
        (bilinear with antialiasing, PIL's downscaling: progressive resizing)."""
        x = (images.float() - self.mean) / self.std
        if side is not None:
            x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True,
                                                align_corners=False)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """`count` images drawn without replacement (all if fewer), normalised, not augmented (N, C, H, W)."""
        index = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:count]
        return self.normalise(self.images[index.to(self.images.device)]).contiguous()

    def epoch(self, seed: int = 0, epoch: int = 0, rank: int = 0, world: int = 1):
        """Batches of one epoch; with world > 1, this rank's share (every world-th image) of each global
        batch, augmented exactly as in a single process."""
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        count = len(self.labels)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        order = order.to(self.labels.device)
        if self.alternating_flip:
            # Jordan 2024: each image is mirrored in every other epoch, starting from a random half,
            # so that consecutive epochs never repeat a view: (seed, image) -> flip, xor the epoch's parity.
            first = torch.rand(count, generator=torch.Generator().manual_seed(10**9 + seed)) < 0.5
            mirrored = (first ^ bool(epoch % 2)).to(self.labels.device)
        side = self.low_res[0] if self.low_res is not None and epoch < self.low_res[1] else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            images = self.images[index]
            if self.crop_padding:
                images = random_crop(images, self.crop_padding, generator, self.crop_padding_mode)
            if self.flip:
                images = flip_where(images, mirrored[index] if self.alternating_flip
                                    else torch.rand(len(images), generator=generator) < 0.5)
            if world > 1:
                images, index = images[rank::world], index[rank::world]
            yield self.normalise(images, side), self.labels[index]


def _plain(images: torch.Tensor) -> list:
    return [(1.0, images)]


def _flip(images: torch.Tensor) -> list:
    return [(0.5, images), (0.5, images.flip(3))]


def _shift(images: torch.Tensor) -> list:
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")  # one pixel up-left and down-right, reflected in
    return [(0.5, images), (0.25, padded[..., 2:, 2:]), (0.25, padded[..., :-2, :-2])]


def _flip_shift(images: torch.Tensor) -> list:
    return [(w / 2, v) for weight, view in _shift(images) for w, v in ((weight, view), (weight, view.flip(3)))]


# train.tta: (weight, view) pairs of a normalised batch whose logits are averaged; the plain batch comes first
TTA_VIEWS = {"none": _plain, "flip": _flip, "shift": _shift, "flip-shift": _flip_shift}


def tta_views(images: torch.Tensor, mode: str) -> list[tuple[float, torch.Tensor]]:
    """(weight, view) pairs of a normalised batch (B, C, H, W) for test-time augmentation `mode`."""
    if mode not in TTA_VIEWS:
        raise UserError(f"unknown test-time augmentation {mode!r}; choose one of: {', '.join(TTA_VIEWS)}")
    return TTA_VIEWS[mode](images)
