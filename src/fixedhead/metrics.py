"""Pure measurements of heads and features: tensors in, numbers out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy import stats


def cosine_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C, D) class vectors -> (C, C) matrix of cos(w_i, w_j)."""
    unit = F.normalize(weight.double(), dim=1)
    return unit @ unit.T


def max_off_diagonal(matrix: torch.Tensor) -> float:
    """Largest entry off the diagonal of a square matrix (the closest pair of classes)."""
    off = matrix.clone()
    off.fill_diagonal_(float("-inf"))
    return off.max().item()


def mean_cos_to_class(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over images of cos(features_n, weight[classes_n]) (the paper's Table 4 with predicted classes)."""
    unit_features = F.normalize(features.double(), dim=1)
    unit_weight = F.normalize(weight.double(), dim=1)
    return (unit_features * unit_weight[classes]).sum(1).mean().item()


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def similarity_confusion_spearman(cosines: torch.Tensor, confusion: torch.Tensor) -> dict:
    """Spearman rho between cos(w_i, w_j) and the count of class-i images predicted as j, i != j."""
    off = ~torch.eye(len(cosines), dtype=torch.bool)
    result = stats.spearmanr(cosines[off].numpy(), confusion[off].double().numpy())
    return {"spearman_rho": float(result.statistic), "spearman_p": float(result.pvalue), "num_pairs": int(off.sum())}
