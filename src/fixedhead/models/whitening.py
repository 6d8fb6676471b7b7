"""Patch-whitening initialisation of an encoder's first convolution (as in airbench, Jordan 2024).

The filters are the eigenvectors of the covariance of the training images' k x k patches, scaled
by 1 / sqrt(eigenvalue + eps), in +/- pairs (so that a ReLU/GELU after them keeps both signs),
largest eigenvalue first: the first layer starts out decorrelating its input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

# model.whiten: none; init (the first convolution starts as patch-whitening filters); frozen (and stays so)
WHITENING = ("none", "init", "frozen")
MAX_IMAGES = 5000  # the covariance of 27-d patches is settled long before this


def patch_covariance(images: torch.Tensor, kernel: int, chunk: int = 500) -> torch.Tensor:
    """(N, C, H, W) float images -> covariance (P, P) of their k x k patches, P = C*k*k, in float64."""
    dim = images.shape[1] * kernel * kernel
    total, outer, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
    for part in images.split(chunk):
        patches = F.unfold(part.double().cpu(), kernel).transpose(1, 2).reshape(-1, dim)  # (n*L, P)
        total += patches.sum(0)
        outer += patches.T @ patches
        count += len(patches)
    mean = total / count
    return (outer - count * torch.outer(mean, mean)) / (count - 1)


def whitening_filters(images: torch.Tensor, kernel: int, eps: float = 5e-4) -> torch.Tensor:
    """(N, C, H, W) float images -> filters (2P, C, k, k): +v1, -v1, +v2, -v2, ... with v_i the
    patch covariance's eigenvectors, largest eigenvalue first, each divided by sqrt(eigenvalue + eps)."""
    channels = images.shape[1]
    eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(images, kernel))  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / (eigenvalues.clamp_min(0) + eps).sqrt()).T  # (P, P): row i is v_i / sqrt(l_i)
    filters = torch.stack([filters, -filters], 1).flatten(0, 1)  # (2P, P)
    return filters.view(-1, channels, kernel, kernel).float()


def first_conv(model: nn.Module) -> nn.Conv2d:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UserError(f"{type(model).__name__} has no convolution to initialise with whitening filters")
    return conv


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: torch.Tensor) -> nn.Conv2d:
    """Set the first Conv2d's filters to patch-whitening filters of `images` (normalised float,
    (N, C, H, W); the first MAX_IMAGES are used). A layer with more output channels than 2P keeps its
    own initialisation for the rest. To freeze them: first_conv(model).weight.requires_grad_(False)."""
    conv = first_conv(model)
    kernel = conv.kernel_size[0]
    if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1] or conv.in_channels != images.shape[1]:
        raise UserError(f"whitening needs a square, ungrouped first convolution over the {images.shape[1]} "
                        f"input channels; {type(model).__name__}'s is {conv}")
    filters = whitening_filters(images[:MAX_IMAGES], kernel)[: conv.out_channels]
    conv.weight[: len(filters)] = filters.to(conv.weight.device, conv.weight.dtype)
    return conv
