"""train.optimizer muon against airbench94_muon's optimizer as published (Jordan 2024), written out here
from its definition: a summed momentum, each filter bank rescaled to norm sqrt(out) before the step, and
three quintic Newton-Schulz steps on the bank as an (out, in * kh * kw) matrix."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fixedhead import optim
from fixedhead.config import TrainConfig
from fixedhead.errors import UserError
from fixedhead.optim import muon
from muon_reference import filter_views, reference_step

A, B, C = 3.4445, -4.7750, 2.0315  # airbench94_muon's coefficients


def _newton_schulz(g, iterations=3):
    x = g.bfloat16()
    x = x / (x.norm() + 1e-7)
    wide = g.size(0) <= g.size(1)
    x = x if wide else x.T
    for _ in range(iterations):
        a = x @ x.T
        x = A * x + (B * a + C * a @ a) @ x
    return (x if wide else x.T).float()


def _airbench_muon_step(filters, buffers, lr, momentum):
    for p, buf in zip(filters, buffers):
        buf.mul_(momentum).add_(p.grad)
        g = p.grad + momentum * buf
        p.data.mul_(len(p) ** 0.5 / p.data.norm())
        p.data.add_(_newton_schulz(g.reshape(len(g), -1)).view(g.shape), alpha=-lr)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.GELU(),
                         nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.GELU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def _batches(n=5):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 10, 10, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def _train(model, optimizer, batches, channels_last=False):
    for x, y in batches:
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _config(**kw):
    return TrainConfig(**{"optimizer": "muon", "muon_lr": 0.2, "muon_momentum": 0.6, "lr": 0.05, "momentum": 0.85,
                          "weight_decay": 0.0, **kw})


def test_filters_take_airbench_muon_steps_and_the_rest_sgd():
    batches = _batches()
    ours = _net()
    _train(ours, optim.make_optimizer(ours, _config()), batches)

    theirs = _net()
    filters = [p for p in theirs.parameters() if p.ndim == 4]
    rest = [p for p in theirs.parameters() if p.ndim != 4]
    buffers = [torch.zeros_like(p) for p in filters]
    sgd = torch.optim.SGD(rest, lr=0.05, momentum=0.85, nesterov=True)
    for x, y in batches:
        sgd.zero_grad(set_to_none=True)
        for p in filters:
            p.grad = None
        nn.functional.cross_entropy(theirs(x), y).backward()
        sgd.step()
        with torch.no_grad():
            _airbench_muon_step(filters, buffers, 0.2, 0.6)

    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        # bf16 Newton-Schulz: the two orders of operations round apart by about a bf16 ulp per step
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2, msg=name)
    start = _net()
    moved = [(a - s).norm() / s.norm() for a, s in zip(ours.parameters(), start.parameters()) if a.ndim == 4]
    assert min(moved) > 0.05  # the filters did move, far beyond the tolerance above


def test_each_filter_bank_is_rescaled_to_norm_sqrt_out_before_its_step():
    model = _net()
    optimizer = optim.make_optimizer(model, _config(muon_lr=1e-9))
    with torch.no_grad():
        model[0].weight.mul_(7.0)
    _train(model, optimizer, _batches(1))
    for conv in (model[0], model[3]):
        assert conv.weight.norm().item() == pytest.approx(math.sqrt(conv.out_channels), rel=1e-5)


def test_channels_last_filters_take_the_same_steps():
    """Filters stored channels-last are viewed in their memory order (columns permuted), which Muon does not see."""
    batches = _batches(3)
    plain, last = _net(), _net().to(memory_format=torch.channels_last)
    assert last[3].weight.is_contiguous(memory_format=torch.channels_last)
    _train(plain, optim.make_optimizer(plain, _config()), batches)
    _train(last, optim.make_optimizer(last, _config()), batches, channels_last=True)
    for a, b in zip(plain.parameters(), last.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2)
    assert last[3].weight.is_contiguous(memory_format=torch.channels_last)  # trained in place


def test_resuming_from_the_optimizer_state_continues_the_same_run():
    batches = _batches(4)
    straight = _net()
    _train(straight, optim.make_optimizer(straight, _config()), batches)

    first = _net()
    optimizer = optim.make_optimizer(first, _config())
    _train(first, optimizer, batches[:2])
    saved = {"model": first.state_dict(), "optimizer": optimizer.state_dict()}
    assert any(len(s.get("momentum_buffer", ())) for s in saved["optimizer"]["state"].values())
    resumed = _net(seed=5)
    resumed.load_state_dict(saved["model"])
    optimizer = optim.make_optimizer(resumed, _config())
    optimizer.load_state_dict(saved["optimizer"])
    _train(resumed, optimizer, batches[2:])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def test_the_groups_and_a_model_without_filters():
    model = _net()
    groups = {g["name"]: g for g in optim.make_optimizer(model, _config()).param_groups}
    assert {id(p) for p in groups["filters"]["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert groups["filters"]["lr"] == 0.2 and groups["filters"]["momentum"] == 0.6
    assert groups["filters"]["weight_decay"] == 0.0
    assert all(p.ndim != 4 for name, g in groups.items() if name != "filters" for p in g["params"])
    with pytest.raises(UserError, match="train.optimizer muon trains convolution filters"):
        optim.make_optimizer(nn.Sequential(nn.Linear(3, 4)), _config())


@pytest.mark.parametrize("shape", [(8, 27), (16, 4), (12, 12)])
def test_orthogonalise_is_the_quintic_newton_schulz_in_float32(shape):
    """Against the iteration in float64 numpy: float32 rounding only (torch's Muon would be bf16's)."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    x = g.double().numpy()
    x = x.T if shape[0] > shape[1] else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(3):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    x = x.T if shape[0] > shape[1] else x
    ours = muon.orthogonalise(g)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), x, rtol=0, atol=1e-5)
    singular = np.linalg.svd(x, compute_uv=False)
    assert singular.min() > 0.3 and singular.max() < 1.3  # roughly orthogonal: what the iteration is for


def test_filter_steps_are_torch_muons_on_the_rescaled_matrix():
    """torch.optim.Muon (the reference; bf16 inside) on each filter bank viewed as a matrix, rescaled first:
    a tall bank (16 filters of 1 x 2 x 2) checks torch's lr factor sqrt(rows / cols)."""
    def net():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(1, 16, 2, bias=False), nn.BatchNorm2d(16), nn.GELU(),
                             nn.Conv2d(16, 8, 3, bias=False), nn.BatchNorm2d(8), nn.GELU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(16, 1, 9, 9, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(4)]
    ours = net()
    config = _config(lr=1e-9, muon_momentum=0.8)  # nesterov: TrainConfig's default
    _train(ours, optim.make_optimizer(ours, config), batches)

    theirs = net()
    filters = [m.weight for m in theirs if isinstance(m, nn.Conv2d)]
    views = filter_views(filters)
    reference = torch.optim.Muon(views, lr=0.2, weight_decay=0.0, momentum=0.8, nesterov=config.nesterov, ns_steps=3)
    for x, y in batches:
        for f in filters:
            f.grad = None
        nn.functional.cross_entropy(theirs(x), y).backward()
        reference_step(reference, filters, views)
    for ours_filter, their_filter in zip((m.weight for m in ours if isinstance(m, nn.Conv2d)), filters):
        torch.testing.assert_close(ours_filter, their_filter, rtol=0, atol=2e-2)  # bf16 in torch's
    assert (ours[0].weight - net()[0].weight).norm() > 0.5  # they moved, far beyond the tolerance


def test_step_hooks_run_once_a_step():
    """SGDMuon's step calls SGD's inside, which torch also wraps with the hooks once a plain SGD exists."""
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # hooks SGD.step, class-wide
    model = _net()
    optimizer = optim.make_optimizer(model, _config())
    calls = []
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    _train(model, optimizer, _batches(2))
    assert len(calls) == 2
