"""SGD with Muon for convolution filters, as airbench94_muon trains them (Jordan 2024).

`train.optimizer: muon`: every trained convolution filter bank (out, in, kh, kw) is one matrix
(out, in * kh * kw) to Muon (orthogonalised momentum, 3 Newton-Schulz steps, Nesterov), and before
each step it is rescaled to norm sqrt(out), as airbench94_muon does: in a batch-normed conv net the
filters' scale carries no function, so fixing it fixes the effective step and no weight decay is
needed. Everything else (batch-norm shifts, the whitening bias, learned class vectors, 1-D and 2-D
weights) takes the SGD steps of steps.make_optimizer. Meant for conv nets with batch norm after
every convolution; where a convolution feeds no normalisation, the rescaling changes the function.

The update is torch.optim.Muon's (momentum as an average, Nesterov, 3 quintic Newton-Schulz steps, its lr
factor sqrt(max(1, rows / cols))), written out here because no maintained library does what this needs:
torch's Muon orthogonalises in bf16 only, which a CPU without bf16 instructions emulates at about 17x the
cost of float32 (airnet's six filter banks: 318 ms against 19 ms a step on one core of a 2-core AMD EPYC,
about 7% of the training step); here it is float32, and it matches torch's Muon to bf16 rounding
(tests/test_muon.py). torch's Muon accepts 2-D parameters only, as does the orthogonalisation; each filter
is viewed as a matrix that shares its storage (so a model moved after this optimizer was made still trains).
The momentum buffer is kept under the filter as torch's Muon keeps it, so the checkpoint, the schedule and
`zero_grad` see one torch optimizer. torch's momentum is an average, (1 - m) times airbench's sum;
orthogonalisation divides the scale out, so the steps are the same.
"""

from __future__ import annotations

import math

import torch

NEWTON_SCHULZ_STEPS = 3  # airbench94_muon's
QUINTIC = (3.4445, -4.7750, 2.0315)  # the Newton-Schulz coefficients of airbench94_muon and torch's Muon
EPS = 1e-7


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
        sgd_step = torch.optim.SGD.step  # torch wraps it with the step hooks once any SGD exists: ours ran them
        sgd_step = sgd_step.__wrapped__ if getattr(sgd_step, "hooked", False) else sgd_step
        try:  # SGD steps the other groups; it reads self.param_groups, so it sees only those
            self.param_groups = [g for g in groups if not g.get("muon")]
            sgd_step(self)
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("muon"):
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        for param in group["params"]:
            if param.grad is None:
                continue
            weight, grad = matrix(param.detach()), matrix(param, param.grad)
            weight.mul_(math.sqrt(len(weight)) / weight.norm().clamp(min=1e-12))  # the bank's norm back to sqrt(out)
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buffer = state["momentum_buffer"]
            buffer.lerp_(grad, 1 - momentum)
            update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
            rows, cols = weight.shape
            weight.add_(orthogonalise(update), alpha=-lr * math.sqrt(max(1.0, rows / cols)))


def orthogonalise(update: torch.Tensor) -> torch.Tensor:
    """About U V^T of update = U S V^T (singular values pushed into roughly (0.5, 1.5)): Muon's quintic
    Newton-Schulz iteration, in float32."""
    a, b, c = QUINTIC
    x = update.float()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=EPS)
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(update.dtype)
