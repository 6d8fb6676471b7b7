"""The peer: a CPU port of airbench93 (Keller Jordan, 2024: "94% on CIFAR-10 in 3.29 seconds on a single
GPU", https://github.com/KellerJordan/cifar10-airbench, files `airbench/lib_airbench93.py` and
`airbench/utils.py`, read at commit f1c599c), rewritten here so that every speed claim of fixedhead
is a ratio against it, run on the same machine in the same invocation (benchmarks/vs_airbench.py).

Kept as published: the network (2x2 patch-whitening stem of 24 filters with a bias and no padding, GELU,
conv groups 64-128-128 with max-pooling, batch-norm shifts only with eps 1e-12 and momentum 0.6 in
airbench's sense, dirac-initialised 3x3 convolutions, max-pool 3, a bias-free linear head scaled by 1/9),
the uncentred whitening of 5,000 training images' 2x2 patches (eps 5e-4), batch 1,024, Nesterov SGD in
decoupled units (lr 11.5 and weight decay 0.0153 per 1,024 images, momentum 0.85, summed loss),
batch-norm shifts at 64x the lr, label smoothing 0.2, the whitening bias trained for 3 epochs only,
warm-up from 0.2 to 1 over 23% of the steps then linear decay to 0.07, lookahead every 5 steps with
decay 0.95^5 (t / T)^3, 2-pixel reflect-padded translations, alternating flips (one random flip of the
whole set, then the set mirrored every other epoch), 11 epochs, drop_last, and test-time augmentation
level 2 (mirror + two one-pixel translations, weighted as published). The clock covers the whitening
initialisation and training, not the per-epoch evaluations, as in airbench; airbench's printed total also
adds the final TTA pass, which the port times apart (`tta_time_s`), as fixedhead's side does.

Changed for this machine, and nothing else: the device is the CPU, not CUDA; float32 (or bf16 autocast
with --bf16, batch norm in float32) instead of fp16; channels_last kept; no cudnn flags or CUDA events
(time.perf_counter); seeds set per run (airbench leaves them free); the data are the CIFAR-10 JPEG
folder decoded by fixedhead's loader (uint8, the same pixels as torchvision's CIFAR-10 arrays for the
shared archive) rather than torchvision's download; the whitening sees 5,000 random training images,
not the first 5,000 (the folder is sorted by class, torchvision's arrays are not). `head="cosine-fixed"`
swaps the last linear layer and its 1/9 for fixedhead's fixed cosine head with scale S (the "fixed head
in the peer's recipe" row).

    python benchmarks/airbench93.py --data-dir /tmp/cifar [--seed 0] [--head cosine-fixed --scale 16]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

HYP = {"epochs": 11, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
       "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3, "translate": 2,
       "widths": (64, 128, 128), "bn_momentum": 0.6, "logit_scale": 1 / 9, "warmup_to": 0.23, "end_lr": 0.07,
       "lookahead_every": 5}
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ShiftOnlyBN(nn.BatchNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=1 - HYP["bn_momentum"])
        self.weight.requires_grad_(False)


def identity_conv(cin: int, cout: int, kernel: int = 3, padding="same", bias=False) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)
    if bias:
        nn.init.zeros_(conv.bias)
    nn.init.dirac_(conv.weight.data[:cin])
    return conv


def conv_group(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(identity_conv(cin, cout), nn.MaxPool2d(2), ShiftOnlyBN(cout), nn.GELU(),
                         identity_conv(cout, cout), ShiftOnlyBN(cout), nn.GELU())


class Scaled(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def make_net(head: str = "linear", scale: float = 16.0, num_classes: int = 10, seed: int = 0) -> nn.Sequential:
    stem = identity_conv(3, 24, kernel=2, padding=0, bias=True)
    w1, w2, w3 = HYP["widths"]
    layers = [stem, nn.GELU(), conv_group(24, w1), conv_group(w1, w2), conv_group(w2, w3), nn.MaxPool2d(3),
              nn.Flatten()]
    if head == "linear":
        layers += [nn.Linear(w3, num_classes, bias=False), Scaled(HYP["logit_scale"])]
    else:
        from fixedhead import ClassHead

        layers += [ClassHead(w3, num_classes, "cosine", fixed=True, scale=scale, seed=seed)]
    net = nn.Sequential(*layers)
    stem.weight.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)


@torch.no_grad()
def init_whitening(stem: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4, largest_first: bool = True) -> None:
    """Uncentred second moment of the 2x2 patches, its eigenvectors / sqrt(eigenvalue + eps), +/-: largest
    first (airbench93), or in eigh's ascending order (airbench94_muon)."""
    c, (h, w) = images.shape[1], stem.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.view(len(patches), -1)
    values, vectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    values, vectors = values.view(-1, 1, 1, 1), vectors.T.reshape(c * h * w, c, h, w)
    if largest_first:
        values, vectors = values.flip(0), vectors.flip(0)
    scaled = vectors / torch.sqrt(values + eps)
    stem.weight.copy_(torch.cat((scaled, -scaled)))


class Loader:
    """Whole-set batches, as airbench's CifarLoader: normalise, pre-flip and pre-pad once; per epoch a random
    translation of every image, the whole set mirrored in odd epochs, a fresh order, full batches only."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, train: bool):
        mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
        self.images = ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        self.labels, self.batch_size, self.train, self.epoch = labels, batch_size, train, 0
        self.padded = None

    def __len__(self) -> int:
        return len(self.images) // self.batch_size if self.train else math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        images = self.images
        if self.train:
            if self.epoch == 0:
                flip = (torch.rand(len(images)) < 0.5).view(-1, 1, 1, 1)
                pad = HYP["translate"]
                self.padded = F.pad(torch.where(flip, images.flip(-1), images), (pad,) * 4, "reflect")
            images = translate(self.padded, self.images.shape[-1])
            if self.epoch % 2 == 1:
                images = images.flip(-1)
        self.epoch += 1
        order = torch.randperm(len(images)) if self.train else torch.arange(len(images))
        for i in range(len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[index], self.labels[index]


def translate(padded: torch.Tensor, size: int) -> torch.Tensor:
    """Each image cut at its own random offset in [-r, r]^2 from the padded set (per-offset masks, r <= 2)."""
    r = (padded.shape[-1] - size) // 2
    shifts = torch.randint(-r, r + 1, (len(padded), 2))
    out = torch.empty(len(padded), padded.shape[1], size, size, dtype=padded.dtype)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[mask] = padded[mask, :, r + dy:r + dy + size, r + dx:r + dx + size]
    return out.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate(net: nn.Module, loader: Loader, tta: bool, bf16: bool) -> float:
    """Accuracy; with tta, airbench's level 2: half the mirrored pair, half the mean of the mirrored pairs
    of the two one-pixel diagonal translations (reflect padding)."""
    net.eval()

    def mirrored(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    correct = 0
    for images, labels in loader:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            if not tta:
                logits = net(images)
            else:
                padded = F.pad(images, (1,) * 4, "reflect")
                shifted = [padded[:, :, :32, :32], padded[:, :, 2:34, 2:34]]
                logits = 0.5 * mirrored(images) + 0.5 * torch.stack([mirrored(s) for s in shifted]).mean(0)
        correct += (logits.float().argmax(1) == labels).sum().item()
    return correct / len(loader.labels)


def train(train_set, test_set, seed: int = 0, head: str = "linear", scale: float = 16.0, bf16: bool = False,
          epochs: int = HYP["epochs"], every_epoch: bool = False, report=None) -> dict:
    """One airbench93 run; returns test accuracy (plain and TTA), training time and, with every_epoch, the
    accuracy (plain and TTA, untimed) after each epoch with the training time up to it."""
    torch.manual_seed(seed)
    batch, momentum = HYP["batch_size"], HYP["momentum"]
    train_loader = Loader(train_set.images, train_set.labels, batch, train=True)
    test_loader = Loader(test_set.images, test_set.labels, 2000, train=False)
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, decay = HYP["lr"] / kilostep, HYP["weight_decay"] * batch / kilostep
    lr_biases = lr * HYP["bias_scaler"]
    net = make_net(head, scale, len(train_set.classes), seed)
    shifts = [p for m in net.modules() if isinstance(m, ShiftOnlyBN) for p in [m.bias]]
    others = [p for p in net.parameters() if p.requires_grad and all(p is not s for s in shifts)]
    optimizer = torch.optim.SGD([{"params": shifts, "lr": lr_biases, "weight_decay": decay / lr_biases},
                                 {"params": others, "lr": lr, "weight_decay": decay / lr}],
                                momentum=momentum, nesterov=True)
    total = math.ceil(len(train_loader) * epochs)
    warmup = int(total * HYP["warmup_to"])

    def factor(step):
        if step < warmup:
            return 0.2 + 0.8 * step / warmup
        return 1.0 + (HYP["end_lr"] - 1.0) * (step - warmup) / (total - warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ramp = 0.95 ** HYP["lookahead_every"] * (torch.arange(total + 1) / total) ** 3
    slow = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")

    def lookahead(decay_now):
        for key, value in net.state_dict().items():
            if value.dtype.is_floating_point:
                slow[key].lerp_(value, 1 - decay_now)
                value.copy_(slow[key])

    start = time.perf_counter()
    init_whitening(net[0], train_loader.images[torch.randperm(len(train_loader.images))[:5000]])
    train_time, step, history = time.perf_counter() - start, 0, []
    for epoch in range(math.ceil(epochs)):
        net[0].bias.requires_grad_(epoch < HYP["whiten_bias_epochs"])
        start = time.perf_counter()
        net.train()
        for images, labels in train_loader:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(images).float(), labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step % HYP["lookahead_every"] == 0:
                lookahead(ramp[step].item())
            if step >= total:
                lookahead(1.0)
                break
        train_time += time.perf_counter() - start
        if every_epoch:
            history.append({"epoch": epoch + 1, "train_time_s": train_time,
                            "test_acc": evaluate(net, test_loader, False, bf16),
                            "test_acc_tta": evaluate(net, test_loader, True, bf16)})
            if report:
                report(history[-1])
    return scored(net, test_loader, bf16, train_time_s=train_time, epochs=epochs, seed=seed, head=head,
                  history=history, scale=scale if head != "linear" else HYP["logit_scale"])


def scored(net: nn.Module, test_loader: Loader, bf16: bool, **record) -> dict:
    """A finished run's result: TTA accuracy (its pass timed apart, as `tta_time_s`), plain accuracy, `record`."""
    start = time.perf_counter()
    result = {"test_acc_tta": evaluate(net, test_loader, True, bf16)}
    return {**result, "tta_time_s": time.perf_counter() - start, "test_acc": evaluate(net, test_loader, False, bf16),
            **record}


def main(run=None, epochs: int = HYP["epochs"], description: str = __doc__.splitlines()[0]):
    """The command line of a port: one run on the CIFAR-10 JPEG folder, a JSON line per epoch, then the result."""
    from fixedhead.data import load

    run = run or train
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", required=True, help="the CIFAR-10 JPEG folder (train/, test/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", choices=("linear", "cosine-fixed"), default="linear")
    parser.add_argument("--scale", type=float, default=16.0, help="S of the fixed cosine head")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU has bf16)")
    args = parser.parse_args()
    train_set, test_set = load("imagefolder", args.data_dir, "train"), load("imagefolder", args.data_dir, "test")
    result = run(train_set, test_set, args.seed, args.head, args.scale, args.bf16, args.epochs, every_epoch=True,
                 report=lambda r: print(json.dumps(r), flush=True))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}))


if __name__ == "__main__":
    main()
