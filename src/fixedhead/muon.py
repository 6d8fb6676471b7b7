"""SGD with Muon for convolution filters, as airbench94_muon trains them (Jordan 2024).

`train.optimizer: muon`: every trained convolution filter bank (out, in, kh, kw) is one matrix
(out, in * kh * kw) to Muon (orthogonalised momentum, 3 Newton-Schulz steps, Nesterov), and before
each step it is rescaled to norm sqrt(out), as airbench94_muon does: in a batch-normed conv net the
filters' scale carries no function, so fixing it fixes the effective step and no weight decay is
needed. Everything else (batch-norm shifts, the whitening bias, learned class vectors, 1-D and 2-D
weights) takes the SGD steps of steps.make_optimizer. Meant for conv nets with batch norm after
every convolution; where a convolution feeds no normalisation, the rescaling changes the function.

The update itself is torch.optim.Muon's. What is hand-written, because no maintained library does
it: torch's Muon accepts 2-D parameters only, so each step hands it 2-D views that share storage
with the filters (built per step, so a model moved after this optimizer was made still trains),
and the rescaling. Muon's momentum state is kept under the filter itself, so the checkpoint, the
schedule and `zero_grad` see one torch optimizer. torch's momentum is an average (1 - m) times
airbench's sum; orthogonalisation divides the scale out, so the steps are the same.
"""

from __future__ import annotations

import math

import torch

NEWTON_SCHULZ_STEPS = 3  # airbench94_muon's


def is_filter(param: torch.Tensor) -> bool:
    """A convolution's filter bank: what Muon trains."""
    return param.ndim == 4


def matrix(param: torch.Tensor, tensor: torch.Tensor | None = None) -> torch.Tensor:
    """`tensor` (default: `param`) as the (out, rest) matrix whose columns follow `param`'s memory order:
    a view of `param` itself (contiguous or channels-last), a copy at most of a gradient laid out otherwise.
    Muon does not care about the order of columns (orthogonalisation commutes with permuting them), only
    that filter and gradient share it."""
    tensor = param if tensor is None else tensor
    if param.is_contiguous():
        order = tensor
    elif param.is_contiguous(memory_format=torch.channels_last):
        order = tensor.permute(0, 2, 3, 1)
    else:
        raise ValueError(f"a filter of shape {tuple(param.shape)} is neither contiguous nor channels-last")
    return order.view(len(param), -1) if tensor is param else order.reshape(len(param), -1)


class SGDMuon(torch.optim.SGD):
    """torch SGD, except that groups with "muon": True take Muon steps (lr, momentum and nesterov of the group)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        try:  # SGD steps the other groups; it reads self.param_groups, so it sees only those
            self.param_groups = [g for g in groups if not g.get("muon")]
            super().step()
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("muon"):
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        views = []
        for param in params:
            view = matrix(param.detach())  # a leaf that shares the filter's storage
            view.mul_(math.sqrt(len(view)) / view.norm().clamp(min=1e-12))  # the bank's norm back to sqrt(out)
            view.grad = matrix(param, param.grad)
            views.append(view)
        muon = torch.optim.Muon(views, lr=group["lr"], weight_decay=0.0, momentum=group["momentum"],
                                nesterov=group["nesterov"], ns_steps=NEWTON_SCHULZ_STEPS)
        for param, view in zip(params, views):
            muon.state[view] = self.state[param]  # its momentum buffer lives (and is saved) with the filter
        muon.step()
