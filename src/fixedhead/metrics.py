"""Pure measurements of heads and features: tensors in, numbers out."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

TOP_K = 5  # the top-k accuracy reported beside top-1 (top5_acc), where a run has more than k classes


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = TOP_K) -> float:
    """Fraction of images whose label is among the k largest logits (N, C); ties broken by torch.topk."""
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean().item()


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images classified as their label (N,): `outputs` are logits (N, C), whose arg-max
    is the class, or the predicted classes (N,)."""
    predicted = outputs.argmax(1) if outputs.dim() == 2 else outputs
    return (predicted == labels).double().mean().item()


def cosine_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C, D) class vectors -> (C, C) matrix of cos(w_i, w_j)."""
    unit = F.normalize(weight.double(), dim=1)
    return unit @ unit.T


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
    from scipy import stats  # imported when used: `import fixedhead` stays light

    values, counts = off_diagonal(cosines).numpy(), off_diagonal(confusion).double().numpy()
    with warnings.catch_warnings():  # no confusion at all: rho is NaN, which reports count as undefined
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(values, counts)
    return {"spearman_rho": float(result.statistic), "spearman_p": float(result.pvalue), "num_pairs": len(values)}


def confused_pair_auc(cosines: torch.Tensor, confusion: torch.Tensor) -> dict:
    """The chance that a confused ordered class pair (some class-i image predicted as j, i != j) has a
    larger cos(w_i, w_j) than an unconfused one, ties counting half (the Mann-Whitney U over both groups'
    sizes): 0.5 means no relation. Spearman over all pairs says little with many classes, where nearly
    every pair has no confusion (ties); this statistic is made for that. NaN when either group is empty."""
    from scipy import stats

    values, confused = off_diagonal(cosines).double().numpy(), (off_diagonal(confusion) > 0).numpy()
    n_confused, n_other = int(confused.sum()), int((~confused).sum())
    auc = (stats.mannwhitneyu(values[confused], values[~confused]).statistic / (n_confused * n_other)
           if n_confused and n_other else float("nan"))
    return {"confused_pair_auc": float(auc), "confused_pairs": n_confused}


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The C*(C-1) entries of a square matrix off its diagonal, row by row."""
    return matrix[~torch.eye(len(matrix), dtype=torch.bool, device=matrix.device)]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, D) mean feature per class and (C,) counts; classes without images get a zero row."""
    features = features.double()
    counts = torch.bincount(labels, minlength=num_classes).double()
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
    return sums / counts.clamp_min(1)[:, None], counts


def within_class_cos(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean over images of cos(features_n, mean feature of its class): 1 means collapsed classes."""
    means, _ = class_means(features, labels, num_classes)
    return mean_cos_to_class(features, means, labels)


def scatter_ratio(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weighted: bool = True) -> float:
    """tr(S_W S_B^+) / C with S_W, S_B the within- and between-class scatter (normalised by N).

    S_B = M^T M with rows M_c = sqrt(n_c/N) (mu_c - mu), so tr(S_W S_B^+) = ||X_w M^+||_F^2 / N where
    X_w holds each feature minus its class mean: no D x D matrix is formed. With `weighted` false, every
    class counts alike in S_B (rows sqrt(1/C') (mu_c - mu), C' the classes present): Papyan et al.'s NC1.
    The two agree on balanced data.
    """
    features = features.double()
    means, counts = class_means(features, labels, num_classes)
    present = counts > 0
    total = len(features)
    centre = features.mean(0)
    share = counts[present] / total if weighted else torch.full((int(present.sum()),), 1 / int(present.sum()))
    between = (means[present] - centre) * share.double().sqrt()[:, None]  # (C', D)
    within = features - means[labels]  # (N, D)
    projected = within @ torch.linalg.pinv(between)  # (N, D) @ (D, C') -> (N, C')
    return (projected.square().sum() / total / num_classes).item()


def separability(weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Inter-class separability and intra-class compactness numbers of a head and its features."""
    num_classes = len(weight)
    vectors = off_diagonal(cosine_matrix(weight))
    means, counts = class_means(features, labels, num_classes)
    present = counts > 0
    mean_cos = off_diagonal(cosine_matrix(means[present]))
    return {
        "class_vector_cos_mean": vectors.mean().item(), "class_vector_cos_max": vectors.max().item(),
        "class_mean_cos_mean": mean_cos.mean().item(), "class_mean_cos_max": mean_cos.max().item(),
        "within_class_cos": within_class_cos(features, labels, num_classes),
        "scatter_ratio": scatter_ratio(features, labels, num_classes),
    }


def cosine_ceiling(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over images of the largest cos(f', w_c) that any f' in the closed orthant of f can reach
    (c = classes[b]): the norm of w_c's part that agrees in sign with f, over ||w_c||. With ReLU-then-pool
    features (all >= 0) it is ||w_c+|| / ||w_c||, about 1/sqrt(2) for a random unit vector: no training
    can push mean cos(f, w_pred) past it. Proof: cos(f', w) = <f', w> / (|f'||w|) <= <f', w+> / (|f'||w|)
    <= |w+| / |w| by Cauchy-Schwarz, with w+ the agreeing part."""
    signs = torch.where(features >= 0, 1.0, -1.0).double()  # (B, D): the orthant each feature lies in
    rows = weight[classes].double()  # (B, D)
    return ((signs * rows).clamp_min(0).norm(dim=1) / rows.norm(dim=1)).mean().item()


def compactness(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor) -> dict:
    """Mean cos(f(x), w) to the predicted and the true class, overall and for right / wrong images, with
    the ceiling the features' signs allow (cosine_ceiling) and the fraction of negative feature entries."""
    correct = predicted == labels
    out = {"mean_cos_to_predicted": mean_cos_to_class(features, weight, predicted),
           "cos_ceiling_predicted": cosine_ceiling(features, weight, predicted),
           "negative_feature_fraction": (features < 0).double().mean().item(),
           "mean_cos_to_true": mean_cos_to_class(features, weight, labels)}
    for name, mask in (("correct", correct), ("wrong", ~correct)):
        value = mean_cos_to_class(features[mask], weight, predicted[mask]) if mask.any() else float("nan")
        out[f"mean_cos_to_predicted_{name}"] = value
    return out


def cluster_order(matrix: torch.Tensor) -> list[int]:
    """Class order from average-linkage clustering of a cosine matrix (similar classes side by side)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = (1 - matrix.double()).clamp_min(0).numpy()
    distance = (distance + distance.T) / 2
    distance[range(len(distance)), range(len(distance))] = 0
    return leaves_list(linkage(squareform(distance, checks=False), "average")).tolist()


# Long-tail groups by training images per class (the convention of long-tail papers, e.g. Liu et al. 2019).
SHOT_GROUPS = {"many": (101, None), "medium": (20, 100), "few": (0, 19)}


def class_accuracies(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Accuracy of each class over its test images (nan for a class without test images)."""
    hits = torch.bincount(labels[predicted == labels], minlength=num_classes).double()
    totals = torch.bincount(labels, minlength=num_classes).double()
    return (hits / totals).tolist()


def long_tail_accuracies(predicted: torch.Tensor, labels: torch.Tensor, train_counts: list[int]) -> dict:
    """balanced_acc (the mean of the per-class accuracies), and many_acc / medium_acc / few_acc: the mean
    accuracy of the classes with > 100, 20-100, < 20 training images (a group without classes is left out)."""
    per_class = class_accuracies(predicted, labels, len(train_counts))
    present = [a for a in per_class if a == a]
    out = {"balanced_acc": sum(present) / len(present)}
    for group, (low, high) in SHOT_GROUPS.items():
        members = [a for a, n in zip(per_class, train_counts) if n >= low and (high is None or n <= high) and a == a]
        if members:
            out[f"{group}_acc"] = sum(members) / len(members)
    return out


def neural_collapse(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor,
                    train_counts: list[int] | None = None) -> dict:
    """Papyan, Han & Donoho (2020)'s measures of neural collapse, in float64:

    - nc1: Tr(S_W S_B^+) / C, within-class scatter against between-class scatter of the features, each
      class alike in S_B (scatter_ratio, unweighted);
    - nc2_equinorm_means / nc2_equinorm_vectors: coefficient of variation of the centred class means'
      norms and of the class vectors' norms; nc2_equiangular: mean |cos(m_i, m_j) + 1 / (C - 1)| over
      pairs of centred class means (0 for a simplex);
    - nc3: || W / ||W||_F - M / ||M||_F ||_F, class vectors against centred class means (self-duality);
    - nc4: the share of images whose predicted class is the nearest class mean's;
    - minority_collapse (with `train_counts` that differ): the mean pairwise cosine of the class vectors
      of the rarest half of the classes (Fang et al. 2021: learned heads squeeze them together).
    Classes without images are left out of the means."""
    h, w = features.double(), weight.double()
    classes = sorted(set(labels.tolist()))
    means = torch.stack([h[labels == c].mean(0) for c in classes])
    centred = means - h.mean(0)
    nc1 = scatter_ratio(h, labels, len(w), weighted=False)
    cv = lambda x: (x.std(unbiased=False) / x.mean()).item()
    cos = cosine_matrix(centred)
    pairs = off_diagonal(cos)
    w_present = w[classes]
    nc3 = torch.linalg.norm(w_present / torch.linalg.norm(w_present) - centred / torch.linalg.norm(centred)).item()
    nearest = torch.tensor(classes)[torch.cdist(h, means).argmin(1)]
    out = {"nc1": nc1, "nc2_equinorm_means": cv(centred.norm(dim=1)), "nc2_equinorm_vectors": cv(w_present.norm(dim=1)),
           "nc2_equiangular": (pairs + 1 / (len(classes) - 1)).abs().mean().item(), "nc3": nc3,
           "nc4": (nearest == logits.argmax(1)).double().mean().item()}
    if train_counts is not None and len(set(train_counts)) > 1:
        rarest = sorted(range(len(train_counts)), key=lambda c: (train_counts[c], c))[:max(2, len(train_counts) // 2)]
        out["minority_collapse"] = off_diagonal(cosine_matrix(w[rarest])).mean().item()
    return out
