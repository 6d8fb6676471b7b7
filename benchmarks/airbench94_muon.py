"""The second peer: a CPU port of airbench94_muon (Keller Jordan, 2024: 94.01% on CIFAR-10 in 2.59 s on an
A100, n = 200; https://github.com/KellerJordan/cifar10-airbench, file `airbench94_muon.py`, read at commit
f1c599c), rewritten here under the rules of the airbench93 port (benchmarks/airbench93.py), whose data
loader, translation, whitening and test-time augmentation it shares, so that the speed recipes are a ratio
against it, run on the same machine in the same invocation (benchmarks/vs_airbench.py --peer airbench94_muon).

Kept as published: the network (2x2 patch-whitening stem of 24 frozen filters with a trained bias, GELU,
conv groups 64-256-256 of dirac-initialised 3x3 convolutions with max-pooling, batch-norm shifts only with
eps 1e-12 and momentum 0.6 in airbench's sense, max-pool 3, a bias-free linear head whose weights are
rescaled to std 1 and whose logits are divided by the width, 256); the uncentred whitening of 5,000
training images' 2x2 patches (eps 5e-4, eigenvectors in torch.linalg.eigh's order); batch 2,000 for 8
epochs (200 steps), drop_last; the summed cross-entropy with label smoothing 0.2; Nesterov SGD (momentum
0.85) for the whitening bias and the batch-norm shifts (lr 0.053) and the head (lr 0.67), with weight
decay 2e-6 x 2,000 divided by each lr; Muon (momentum 0.6, Nesterov, lr 0.24) for the convolution
filters, each filter bank first rescaled to norm sqrt(out channels), its update orthogonalised by 3
quintic Newton-Schulz steps; every lr decaying linearly to 0 over the run, the whitening bias's over its
3 epochs, after which it stops learning (its gradient detached, as published); 2-pixel reflect-padded
translations and alternating flips; test-time augmentation level 2. The clock covers the whitening
initialisation and training, not the per-epoch evaluations; airbench's total also adds the final TTA
pass, which the port times apart (`tta_time_s`), as the airbench93 port does.

Changed for this machine, and nothing else: the CPU, not CUDA; precision by fixedhead's rule (bf16
autocast where the CPU has bf16 natively, batch norm in float32; else float32) instead of fp16 weights,
and the Newton-Schulz steps in bf16 only where it is native (float32 otherwise, as fixedhead's Muon does:
emulated bf16 costs about 17x); no torch.compile of the model or of the Newton-Schulz function (fixedhead's
side is not compiled either; `max-autotune` targets GPUs); torch's SGD without `fused` (CUDA only);
channels_last kept; no cudnn flags or CUDA events (time.perf_counter); seeds set per run; the data are
the CIFAR-10 JPEG folder decoded by fixedhead's loader, and the whitening sees 5,000 random training
images, not the first 5,000 (the folder is sorted by class). `head="cosine-fixed"` swaps the linear head
and its 1/256 for fixedhead's fixed cosine head with scale S (no head parameters then).

    python benchmarks/airbench94_muon.py --data-dir /tmp/cifar [--seed 0] [--bf16]
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airbench93 import Loader, ShiftOnlyBN, conv_group, evaluate, init_whitening, scored  # noqa: E402  (shared parts)
from airbench93 import main as command_line  # noqa: E402

HYP = {"epochs": 8, "batch_size": 2000, "bias_lr": 0.053, "head_lr": 0.67, "filter_lr": 0.24, "weight_decay": 2e-6,
       "momentum": 0.85, "muon_momentum": 0.6, "label_smoothing": 0.2, "whiten_bias_epochs": 3,
       "widths": (64, 256, 256), "newton_schulz_steps": 3}
QUINTIC = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(g: torch.Tensor, bf16: bool, steps: int = HYP["newton_schulz_steps"],
                                eps: float = 1e-7) -> torch.Tensor:
    """The peer's quintic Newton-Schulz orthogonalisation of a matrix (no exact U V^T: singular values end
    near 1, in about [0.5, 1.5])."""
    a, b, c = QUINTIC
    x = g.bfloat16() if bf16 else g.float()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """The peer's Muon: summed momentum (Nesterov), the filter rescaled to norm sqrt(rows), then a step along
    the orthogonalised update."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool = True, bf16: bool = False):
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})
        self.bf16 = bf16

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                buf = state.setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm())
                update = zeropower_via_newtonschulz5(g.reshape(len(g), -1), self.bf16).view(g.shape)
                p.add_(update.to(p.dtype), alpha=-group["lr"])


class CifarNet(nn.Module):
    def __init__(self, head: str = "linear", scale: float = 16.0, num_classes: int = 10, seed: int = 0):
        super().__init__()
        w1, w2, w3 = HYP["widths"]
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.layers = nn.Sequential(nn.GELU(), conv_group(24, w1), conv_group(w1, w2), conv_group(w2, w3),
                                    nn.MaxPool2d(3))
        self.linear = head == "linear"
        if self.linear:
            self.head = nn.Linear(w3, num_classes, bias=False)
            with torch.no_grad():
                self.head.weight.mul_(1 / self.head.weight.std())
        else:
            from fixedhead import ClassHead

            self.head = ClassHead(w3, num_classes, "cosine", fixed=True, scale=scale, seed=seed)
        self.whiten_bias_grad = True

    def forward(self, x):
        bias = self.whiten.bias if self.whiten_bias_grad else self.whiten.bias.detach()
        x = self.layers(F.conv2d(x, self.whiten.weight, bias)).flatten(1)
        return self.head(x) / x.size(-1) if self.linear else self.head(x)


def train(train_set, test_set, seed: int = 0, head: str = "linear", scale: float = 16.0, bf16: bool = False,
          epochs: int = HYP["epochs"], every_epoch: bool = False, report=None) -> dict:
    """One airbench94_muon run; returns test accuracy (plain and TTA), training time and, with every_epoch,
    the accuracy (plain and TTA, untimed) after each epoch with the training time up to it."""
    torch.manual_seed(seed)
    batch = HYP["batch_size"]
    train_loader = Loader(train_set.images, train_set.labels, batch, train=True)
    test_loader = Loader(test_set.images, test_set.labels, 2000, train=False)
    net = CifarNet(head, scale, len(train_set.classes), seed).to(memory_format=torch.channels_last)
    total, bias_steps = math.ceil(epochs * len(train_loader)), math.ceil(HYP["whiten_bias_epochs"] * len(train_loader))
    decay = HYP["weight_decay"] * batch
    shifts = [m.bias for m in net.modules() if isinstance(m, ShiftOnlyBN)]
    groups = [{"params": [net.whiten.bias], "lr": HYP["bias_lr"], "weight_decay": decay / HYP["bias_lr"]},
              {"params": shifts, "lr": HYP["bias_lr"], "weight_decay": decay / HYP["bias_lr"]}]
    if head == "linear":
        groups.append({"params": [net.head.weight], "lr": HYP["head_lr"], "weight_decay": decay / HYP["head_lr"]})
    sgd = torch.optim.SGD(groups, lr=HYP["bias_lr"], momentum=HYP["momentum"], nesterov=True)
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
    muon = Muon(filters, lr=HYP["filter_lr"], momentum=HYP["muon_momentum"], nesterov=True, bf16=bf16)
    groups = sgd.param_groups + muon.param_groups  # the first: the whitening bias, on its own 3-epoch decay
    initial = [group["lr"] for group in groups]

    start = time.perf_counter()
    with torch.no_grad():
        init_whitening(net.whiten, train_loader.images[torch.randperm(len(train_loader.images))[:5000]],
                       largest_first=False)
    train_time, step, history = time.perf_counter() - start, 0, []
    for epoch in range(math.ceil(total / len(train_loader))):
        start = time.perf_counter()
        net.train()
        for images, labels in train_loader:
            net.whiten_bias_grad = step < bias_steps
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                outputs = net(images)
            F.cross_entropy(outputs.float(), labels, label_smoothing=HYP["label_smoothing"], reduction="sum").backward()
            for k, group in enumerate(groups):
                group["lr"] = initial[k] * (1 - step / (bias_steps if k == 0 else total))
            sgd.step()
            muon.step()
            net.zero_grad(set_to_none=True)
            step += 1
            if step >= total:
                break
        train_time += time.perf_counter() - start
        if every_epoch:
            history.append({"epoch": epoch + 1, "train_time_s": train_time,
                            "test_acc": evaluate(net, test_loader, False, bf16),
                            "test_acc_tta": evaluate(net, test_loader, True, bf16)})
            if report:
                report(history[-1])
    return scored(net, test_loader, bf16, train_time_s=train_time, epochs=epochs, seed=seed, head=head,
                  history=history, scale=scale if head != "linear" else 1 / HYP["widths"][-1])


if __name__ == "__main__":
    command_line(train, HYP["epochs"], __doc__.splitlines()[0])
