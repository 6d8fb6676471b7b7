"""torch.optim.Muon as the reference for Muon on convolution filters: each filter bank viewed as a matrix
(out, rest) that shares its storage, rescaled to norm sqrt(out) before each step, as airbench94_muon does."""

import torch


def filter_views(filters: list[torch.Tensor]) -> list[torch.Tensor]:
    return [f.detach().view(len(f), -1) for f in filters]


def reference_step(reference: torch.optim.Optimizer, filters: list[torch.Tensor], views: list[torch.Tensor]) -> None:
    """One step of `reference` (a torch.optim.Muon over `views`) with the filters' current gradients."""
    with torch.no_grad():
        for f, view in zip(filters, views):
            view.mul_(len(view) ** 0.5 / view.norm())
            view.grad = f.grad.view(len(f), -1)
    reference.step()
