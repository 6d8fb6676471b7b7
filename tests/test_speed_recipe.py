"""The pieces of the CPU speed recipe taken from airbench (Jordan 2024): decoupled hyperparameters,
the batch-norm shift learning rate, the schedule's floor and the `airnet` encoder, each against an
oracle written from the published definitions (or against the peer port in benchmarks/)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fixedhead
from fixedhead import optim
from fixedhead.config import TrainConfig, make_config
from fixedhead.models.classifier import build_encoder, build_model
from fixedhead.models.whitening import whiten_first_conv, whitening_filters
from muon_reference import filter_views, reference_step

PORT = Path(__file__).resolve().parents[1] / "benchmarks" / "airbench93.py"
SEARCHES = PORT.parent / "experiments" / "speed"  # the validation searches behind the shipped recipes


def _port(name="airbench93"):
    """A script of benchmarks/ as a module: the peer's port, or the side by side ("vs_airbench")."""
    spec = importlib.util.spec_from_file_location(name, PORT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _small_net(seed=0):
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d(4)
    norm.weight.requires_grad_(False)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), norm, nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5, bias=False))


def test_decoupled_sgd_over_the_batch_mean_takes_airbench_steps_over_the_batch_sum():
    """airbench's own parametrisation (summed loss, lr / k, decay lambda * B / k over lr, shifts at 64x
    lr with their decay divided by 64) and ours (mean loss, train.decoupled, train.bn_bias_lr) end at
    the same weights after 6 steps."""
    batch, lr, decay, momentum, scaler = 32, 11.5, 0.0153, 0.85, 64.0
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 5, (batch,), generator=g)) for _ in range(6)]

    theirs = _small_net()
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    raw_lr, raw_decay = lr / kilostep, decay * batch / kilostep
    shifts = [theirs[1].bias]
    others = [p for p in theirs.parameters() if p.requires_grad and p is not theirs[1].bias]
    optimizer = torch.optim.SGD([{"params": shifts, "lr": raw_lr * scaler, "weight_decay": raw_decay / (raw_lr * scaler)},
                                 {"params": others, "lr": raw_lr, "weight_decay": raw_decay / raw_lr}],
                                momentum=momentum, nesterov=True)
    for x, y in data:
        loss = nn.functional.cross_entropy(theirs(x), y, label_smoothing=0.2, reduction="sum")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    ours = _small_net()
    config = TrainConfig(lr=lr, weight_decay=decay, momentum=momentum, batch_size=batch, decoupled=True,
                         bn_bias_lr=scaler)
    optimizer = optim.make_optimizer(ours, config)
    assert {g["name"] for g in optimizer.param_groups} == {"encoder", "bn_shifts"}
    for x, y in data:
        loss = nn.functional.cross_entropy(ours(x), y, label_smoothing=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip(theirs.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.equal(ours[1].bias, torch.zeros(4))  # the shifts did move


def test_plain_hyperparameters_pass_through_and_shifts_join_the_encoder_at_scale_one():
    config = TrainConfig(lr=0.3, weight_decay=1e-3)
    assert optim.sgd_hyperparameters(config) == (0.3, 1e-3)
    assert [g["name"] for g in optim.make_optimizer(_small_net(), config).param_groups] == ["encoder"]
    # Decoupled decay is independent of the lr: doubling lr doubles the step but not lr * decay per step.
    one, two = (optim.sgd_hyperparameters(TrainConfig(lr=v, weight_decay=0.01, decoupled=True)) for v in (1.0, 2.0))
    assert two[0] == pytest.approx(2 * one[0]) and two[0] * two[1] == pytest.approx(one[0] * one[1])


def test_the_linear_schedule_ends_at_its_floor():
    total, warmup, final = 100, 23, 0.07
    factors = [optim.lr_factor(s, total, warmup, "linear", final) for s in range(total)]
    expected = np.interp(np.arange(total), [warmup, total], [1.0, final])  # after the warm-up: a straight line
    np.testing.assert_allclose(factors[warmup:], expected[warmup:], rtol=1e-12)
    assert factors[warmup - 1] == 1.0 and factors[0] == pytest.approx(1 / warmup)
    cosine = optim.lr_factor(total, total, 0, "cosine", final)
    assert cosine == pytest.approx(final) and optim.lr_factor(0, total, 0, "cosine", final) == 1.0


def test_the_warm_up_can_start_above_zero_as_the_peers_does():
    """train.warmup_start: the factor climbs in a straight line from `start` (before step 0) to 1 (after the
    last warm-up step): airbench's 0.2 + 0.8 t / T, one step later as our warm-up always is; 0 is the old ramp."""
    total, warmup, final, start = 100, 23, 0.07, 0.2
    factors = [optim.lr_factor(s, total, warmup, "linear", final, start) for s in range(total)]
    np.testing.assert_allclose(factors[:warmup], np.interp(np.arange(1, warmup + 1), [0, warmup], [start, 1.0]),
                               rtol=1e-12)
    assert factors[warmup:] == [optim.lr_factor(s, total, warmup, "linear", final) for s in range(warmup, total)]
    assert optim.lr_factor(0, total, warmup, "linear", final, 0.0) == pytest.approx(1 / warmup)


def test_flip_shift_tta_is_the_peers_level_two_tta():
    """train.tta=flip-shift averages the same six views with the same weights as airbench's TTA level 2:
    labels taken from our averaged logits are all right under the port's evaluate, and plain-view labels are not."""
    from fixedhead.data.pipeline import tta_views

    port = _port()
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)).double().eval()
    images = torch.randn(64, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = sum(weight * net(view) for weight, view in tta_views(images, "flip-shift")).argmax(1)
        plain = net(images).argmax(1)

    class Batches(list):
        labels = None

    for labels, expected in ((ours, 1.0), (plain, (plain == ours).double().mean().item())):
        loader = Batches([(images, labels)])
        loader.labels = labels
        assert port.evaluate(net, loader, tta=True, bf16=False) == expected
    assert not torch.equal(plain, ours)  # the views matter for this net, so the first check could fail


def test_airnet_is_the_peer_network():
    """Same layers, shapes and initialisation rules as the port of airbench93 (benchmarks/airbench93.py):
    with the port's weights copied in order, airnet's features are the port's input to its linear head."""
    port = _port()
    theirs = port.make_net().to(memory_format=torch.contiguous_format)
    ours = build_encoder("airnet")
    assert ours.num_features == 128
    their_state = [v for k, v in theirs.state_dict().items() if not k.startswith("7.")]  # the linear head
    our_state = list(ours.state_dict().values())
    assert [tuple(v.shape) for v in our_state] == [tuple(v.shape) for v in their_state]
    ours.load_state_dict(dict(zip(ours.state_dict(), their_state)))
    x = torch.randn(6, 3, 32, 32)
    theirs.eval(), ours.eval()
    torch.testing.assert_close(ours(x), theirs[:7](x))
    norms = [m for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert all(m.eps == 1e-12 and m.momentum == pytest.approx(0.4) for m in norms)


def test_airnet_convolutions_start_as_identities_and_the_stem_takes_all_whitening_filters():
    encoder = build_encoder("airnet")
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    stem, first = convs[0], convs[1]
    assert stem.kernel_size == (2, 2) and stem.padding == (0, 0) and stem.out_channels == 2 * 3 * 4
    x = torch.randn(2, first.in_channels, 9, 9)
    torch.testing.assert_close(first(x)[:, :first.in_channels], x)  # dirac: the first C_in filters pass x on
    images = torch.randn(64, 3, 12, 12) + torch.randn(64, 1, 12, 12)
    whiten_first_conv(encoder, images)
    torch.testing.assert_close(stem.weight, whitening_filters(images, 2))  # 12-d patches: all 24 filters used


def _conv_macs(encoder) -> int:
    """Multiply-adds of the encoder's convolutions for one 32-px image, by PyTorch's own FLOP counter
    (it counts 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        encoder(torch.randn(1, 3, 32, 32))
    return counter.get_flop_counts()["Global"][torch.ops.aten.convolution] // 2


def test_airnet_small_is_airnet_at_three_quarter_width_and_six_tenths_of_its_multiply_adds():
    full, small = build_encoder("airnet"), build_encoder("airnet-small")
    assert [type(m) for m in small.modules()] == [type(m) for m in full.modules()]
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)] == [24, 48, 48, 96, 96, 96, 96]
    assert small.num_features == 96 and small(torch.randn(2, 3, 32, 32)).shape == (2, 96)

    def by_hand(widths):  # the 2x2 stem on 32 px gives 31 px; each block: 3x3 conv, max-pool (halves), 3x3 conv
        total, side, cin = 24 * 3 * 2 * 2 * 31 * 31, 31, 24
        for width in widths:
            total += width * cin * 9 * side * side
            side //= 2
            total += width * width * 9 * side * side
            cin = width
        return total

    assert _conv_macs(full) == by_hand((64, 128, 128)) and _conv_macs(small) == by_hand((48, 96, 96))
    assert 0.58 < _conv_macs(small) / _conv_macs(full) < 0.63


def test_airnet_trains_with_the_recipe_keys(tmp_path):
    from fixedhead import fit

    overrides = {"data.name": "digits", "model.arch": "airnet", "model.whiten": "frozen", "train.epochs": 1,
                 "train.batch_size": 128, "train.lr": 2.0, "train.decoupled": True, "train.weight_decay": 0.01,
                 "train.momentum": 0.85, "train.bn_bias_lr": 64.0, "train.final_lr": 0.07, "train.lookahead": 5,
                 "train.label_smoothing": 0.2, "model.similarity": "cosine", "model.fixed": True,
                 "model.scale": 16.0}
    final = fit(make_config(overrides), tmp_path / "run", verbose=False)
    assert final["status"] == "finished" and final["test_acc"] > 0.3 and math.isfinite(final["train_losses"][-1])
    model = build_model(make_config(overrides).model, 0, 10, 1, 16)
    assert model.encoder.num_features == 128


def test_the_recipe_files_and_the_peer_as_a_config_are_valid_and_agree_with_the_port():
    bench = _port("vs_airbench")
    hyp = bench.airbench93.HYP
    peer = make_config(bench.PEER_AS_CONFIG)
    assert (peer.train.lr, peer.train.momentum, peer.train.weight_decay, peer.train.bn_bias_lr, peer.train.batch_size,
            peer.train.label_smoothing, peer.train.final_lr, peer.train.lookahead, peer.data.crop_padding,
            peer.model.whiten_bias_epochs, peer.train.warmup_start, peer.data.crop_padding_mode) == \
        (hyp["lr"], hyp["momentum"], hyp["weight_decay"], hyp["bias_scaler"], hyp["batch_size"],
         hyp["label_smoothing"], hyp["end_lr"], hyp["lookahead_every"], hyp["translate"],
         hyp["whiten_bias_epochs"], 0.2, "reflect")
    for name in ("configs/speed/cpu-fast.yaml", str(SEARCHES / "cpu-fast-muon6.yaml"), "speed/cpu-fast-short",
                 "speed/cpu-fast-long"):
        recipe = make_config(bench.recipe_config(name))
        assert recipe.model.arch == "airnet" and recipe.train.decoupled and recipe.model.fixed


def test_the_side_by_side_reads_a_recipe_through_base_from_and_refuses_a_file_of_several_runs():
    """vs_airbench --recipe: cpu-fast-muon6 is cpu-fast's base (recomputed from the YAML text) with its own keys
    over it; a file of several variants (cpu-fast-muon) is refused, not silently cut to its first variant."""
    import yaml

    bench = _port("vs_airbench")
    shipped = Path(fixedhead.__file__).parent / "configs" / "speed"
    parent = yaml.safe_load((shipped / "cpu-fast.yaml").read_text())["base"]
    own = yaml.safe_load((SEARCHES / "cpu-fast-muon6.yaml").read_text())["base"]
    short = bench.recipe_config(str(SEARCHES / "cpu-fast-muon6.yaml"))
    assert short == {**parent, **own} and short["train.optimizer"] == "muon" and len(short) > len(own)
    assert short["train.warmup_epochs"] == pytest.approx(0.23 * short["train.epochs"], abs=0.005)
    with pytest.raises(bench.UserError, match="4 variants"):
        bench.recipe_config(str(SEARCHES / "cpu-fast-muon.yaml"))


@pytest.mark.parametrize("name, epochs, small_epochs", [("cpu-fast-short", 7, 3), ("cpu-fast-long", 12, 4)])
def test_the_small_start_recipes_are_the_muon_recipe_with_small_first_epochs_and_a_warm_up_of_23_percent(
        name, epochs, small_epochs):
    """cpu-fast-short and cpu-fast-long, each readable alone: the search's base (cpu-fast with the Muon keys of
    cpu-fast-muon6, recomputed from the YAML texts) with more epochs, the first few scaled down to 24 px, and a
    warm-up that is still 23% of training; each builds a valid config."""
    import yaml

    bench = _port("vs_airbench")
    shipped = Path(fixedhead.__file__).parent / "configs" / "speed"
    tree = yaml.safe_load((shipped / f"{name}.yaml").read_text())
    assert "base_from" not in tree
    fast = yaml.safe_load((shipped / "cpu-fast.yaml").read_text())["base"]
    muon = yaml.safe_load((SEARCHES / "cpu-fast-muon6.yaml").read_text())["base"]
    recipe = bench.recipe_config(f"speed/{name}")
    own = {k: v for k, v in recipe.items() if k not in ("train.epochs", "train.warmup_epochs", "data.low_res_size",
                                                          "data.low_res_epochs")}
    assert own == {k: v for k, v in {**fast, **muon}.items() if k not in ("train.epochs", "train.warmup_epochs")}
    config = make_config(recipe)
    assert (config.train.epochs, config.data.low_res_epochs, config.data.low_res_size) == (epochs, small_epochs, 24)
    assert config.train.optimizer == "muon"
    assert config.train.warmup_epochs == pytest.approx(0.23 * config.train.epochs, abs=0.005)


def test_the_side_by_side_summary_counts_seeds_that_missed_a_target():
    """A target one side never reached in a seed is said in the line, not dropped from n silently."""
    bench = _port("vs_airbench")
    line = bench.summary([2.0, None, 4.0])
    assert line.startswith("3 +/- 1.4 (n = 2") and "not reached in 1 of 3 seeds" in line
    assert "not reached" not in bench.summary([2.0, 4.0])
    assert bench.summary([None, 5.0]) == "5 (n = 1; not reached in 1 of 2 seeds)"


def test_the_side_by_side_keeps_finished_pairs_and_refuses_another_setup(tmp_path, monkeypatch, capsys):
    """benchmarks/vs_airbench.py --out: a finished seed's pair is kept and not trained again by a rerun
    with the same setup; a rerun with another setup is refused rather than mixed in."""
    import sys

    bench = _port("vs_airbench")
    trained = []

    def result(seconds):
        return {"test_acc_tta": 0.9, "train_time_s": seconds, "epochs": 1,
                "history": [{"epoch": 1, "train_time_s": seconds, "test_acc_tta": 0.9}]}

    def peer(train_set, test_set, seed, *args, **kwargs):
        trained.append(("peer", seed))
        return result(10.0 * (1 + seed))

    def mine(overrides, data_dir, seed, folder):
        trained.append(("ours", seed))
        return result(5.0 * (1 + seed))

    monkeypatch.setattr(bench.airbench93, "train", peer)
    monkeypatch.setattr(bench, "ours", mine)
    monkeypatch.setattr(bench, "load", lambda *args: [0] * 100)  # only its length is read
    argv = ["vs_airbench.py", "--data-dir", str(tmp_path), "--out", str(tmp_path / "kept")]
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "1"])
    bench.main()
    assert trained == [("peer", 0), ("ours", 0)]
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "2"])
    bench.main()
    # seed 0 kept, seed 1 trained, ours first: the side that goes first alternates with the seed
    assert trained == [("peer", 0), ("ours", 0), ("ours", 1), ("peer", 1)]
    assert json.loads((tmp_path / "kept" / "seed-1.json").read_text())["first"] == "ours"
    out = capsys.readouterr().out
    assert '"kept": true' in out and "ours / peer 0.5 +/- 0 (n = 2" in out  # both seeds in the summary
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "2", "--set", "model.scale=16"])  # the recipe's 16.0, as text
    bench.main()
    assert len(trained) == 4  # the same setup however it is spelt: both seeds kept
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "3", "--set", "train.muon_momentum=1"])
    with pytest.raises(bench.UserError, match="muon_momentum"):
        bench.main()
    assert len(trained) == 4  # a bad value is refused before either side trains
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "1", "--set", "model.scale=8"])
    with pytest.raises(bench.UserError, match="another setup"):
        bench.main()
    (tmp_path / "kept" / "seed-0.json").write_text('{"setup": {}, "peer": 1}')  # damaged: an error, not a KeyError
    with pytest.raises(bench.UserError, match="seed-0.json"):
        bench.main()


def test_the_whitening_bias_learns_for_its_epochs_then_stays_put_with_no_gradient(tmp_path, monkeypatch):
    """model.whiten_bias_epochs (airbench's whiten_bias_epochs): the stem's bias moves in the first N epochs
    only; frozen, it gets no gradient (so backward stops before the stem), and a resume keeps the rule."""
    from fixedhead import fit
    from fixedhead.errors import UserError
    from fixedhead.models.whitening import first_conv
    from fixedhead.training import fit as train_mod
    from interrupts import fit_interrupted, same_result

    overrides = {"data.name": "digits", "model.arch": "airnet", "model.whiten": "frozen", "train.epochs": 3,
                 "train.batch_size": 128, "train.lr": 2.0, "train.decoupled": True, "model.whiten_bias_epochs": 1}
    seen, original = [], train_mod._whiten_bias

    def watch(model, model_cfg, epoch):  # the bias as each epoch starts, before the rule is applied
        seen.append((epoch, first_conv(model.encoder).bias.detach().clone(), model))
        original(model, model_cfg, epoch)

    monkeypatch.setattr(train_mod, "_whiten_bias", watch)
    fit(make_config(overrides), tmp_path / "run", verbose=False)
    (_, start, model), (_, after_1, _), (_, after_2, _) = seen
    bias = first_conv(model.encoder).bias
    assert not torch.equal(start, after_1)  # epoch 1 trained it
    assert torch.equal(after_1, after_2) and torch.equal(after_1, bias.detach())  # epochs 2-3 did not
    assert not bias.requires_grad and bias.grad is None
    monkeypatch.setattr(train_mod, "_whiten_bias", original)
    fit_interrupted(make_config(overrides), tmp_path / "cut", 2, monkeypatch)
    fit(make_config(overrides), tmp_path / "cut", resume=True, verbose=False)
    assert same_result(tmp_path / "run", tmp_path / "cut")
    with pytest.raises(UserError, match="needs model.whiten init or frozen"):
        make_config({**overrides, "model.whiten": "none"})
    with pytest.raises(UserError, match="fastnet-small's has none"):
        fit(make_config({**overrides, "model.arch": "fastnet-small"}), tmp_path / "no-bias", verbose=False)
    assert not (tmp_path / "no-bias").exists()


def test_the_airbench94_muon_ports_muon_takes_torch_muons_steps():
    """The port's Muon (the peer's: summed momentum, Nesterov, filters rescaled to norm sqrt(rows), here in
    float32) against torch.optim.Muon (momentum as an average: the same direction, which orthogonalisation
    keeps) on wide filter banks, where torch's lr factor is 1."""
    port = _port("airbench94_muon")

    def net():
        torch.manual_seed(5)
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.GELU(),
                             nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16), nn.GELU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    g = torch.Generator().manual_seed(6)
    batches = [(torch.randn(16, 3, 9, 9, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(4)]

    def run(model, step):
        filters = [m.weight for m in model if isinstance(m, nn.Conv2d)]
        for x, y in batches:
            for f in filters:
                f.grad = None
            nn.functional.cross_entropy(model(x), y).backward()
            step(filters)
        return filters

    ours = net()
    muon = port.Muon([m.weight for m in ours if isinstance(m, nn.Conv2d)], lr=0.2, momentum=0.6, nesterov=True)
    run(ours, lambda filters: muon.step())
    theirs = net()
    views = filter_views([m.weight for m in theirs if isinstance(m, nn.Conv2d)])
    reference = torch.optim.Muon(views, lr=0.2, weight_decay=0.0, momentum=0.6, nesterov=True, ns_steps=3)
    expected = run(theirs, lambda filters: reference_step(reference, filters, views))
    for mine, their in zip((m.weight for m in ours if isinstance(m, nn.Conv2d)), expected):
        torch.testing.assert_close(mine, their, rtol=0, atol=2e-2)  # bf16 inside torch's
    assert (ours[0].weight - net()[0].weight).norm() > 0.5


def test_the_airbench94_muon_port_is_the_published_network_and_trains(monkeypatch):
    port = _port("airbench94_muon")
    net = port.CifarNet()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters() if p.requires_grad and p.ndim == 4}
    assert sorted(shapes.values()) == sorted([(64, 24, 3, 3), (64, 64, 3, 3), (256, 64, 3, 3), (256, 256, 3, 3),
                                              (256, 256, 3, 3), (256, 256, 3, 3)])
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    assert net.head.weight.shape == (10, 256) and net.head.weight.std().item() == pytest.approx(1.0, abs=1e-5)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the loop end to end, at a size a test affords: narrower, smaller batches
    monkeypatch.setitem(port.HYP, "widths", (8, 16, 16))
    monkeypatch.setitem(port.HYP, "batch_size", 64)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    images = (torch.rand(256, 3, 32, 32, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 50).to(torch.uint8)
    from fixedhead.data import ImageSet

    data = ImageSet(images, labels, ["a", "b", "c", "d"])
    result = port.train(data, data, seed=0, epochs=4, every_epoch=True)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3, 4] and result["train_time_s"] > 0
    assert result["test_acc_tta"] > 0.5  # four bright levels: learnable in 16 steps
