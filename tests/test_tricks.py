"""Test-time augmentation, the patch-whitening first layer and the weight average, against plain
numpy/torch oracles."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm

import tiny
from fixedhead import fit
from fixedhead.cli import main
from fixedhead.config import make_config
from fixedhead.data.loaders import prepare
from fixedhead.data.pipeline import BatchLoader
from fixedhead.errors import UserError
from fixedhead.evaluation.trained import evaluate_run, predict
from fixedhead.models.classifier import build_model
from fixedhead.models.whitening import first_conv, patch_covariance, whiten_first_conv, whitening_filters
from fixedhead.optim import make_optimizer
from fixedhead.optim.lookahead import Lookahead
from fixedhead.training import epoch as steps
from fixedhead.training.stepping import Stepper
from interrupts import fit_interrupted, same_result

TINY = {**tiny.TINY, "train.lr": 0.05}


def _correlated_images(n=64, side=12, seed=0):
    """Images whose neighbouring pixels and channels are strongly correlated (smoothed noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, side + 4, side + 4, generator=g)
    x = F.avg_pool2d(x, 3, 1)[..., :side, :side]
    return x + 0.5 * x.mean(1, keepdim=True)  # correlate the channels too


def _np_patches(images: np.ndarray, k: int) -> np.ndarray:
    """(N, C, H, W) -> (N * L, C*k*k) with the channel-major, row, column order of a conv weight."""
    n, c, h, w = images.shape
    rows = [images[:, :, i:i + k, j:j + k].reshape(n, -1) for i in range(h - k + 1) for j in range(w - k + 1)]
    return np.concatenate(rows)


def test_patch_covariance_matches_numpy():
    images = _correlated_images()
    expected = np.cov(_np_patches(images.numpy().astype(np.float64), 3), rowvar=False)
    np.testing.assert_allclose(patch_covariance(images, 3, chunk=7).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_whitening_filters_whiten_the_patches_and_come_in_signed_pairs():
    images = _correlated_images()
    filters = whitening_filters(images, 3, eps=1e-8)
    assert filters.shape == (54, 3, 3, 3)
    torch.testing.assert_close(filters[1::2], -filters[::2])
    # The + half, applied as a convolution, gives uncorrelated unit-variance outputs (plain numpy).
    out = F.conv2d(images.double(), filters[::2].double()).transpose(0, 1).flatten(1).numpy()  # (27, N*L)
    np.testing.assert_allclose(np.cov(out), np.eye(27), atol=1e-4)
    # Largest-variance direction first: the eigenvalue order of numpy's covariance.
    eigenvalues = np.linalg.eigvalsh(np.cov(_np_patches(images.numpy().astype(np.float64), 3), rowvar=False))[::-1]
    norms = filters[::2].flatten(1).double().norm(dim=1).numpy()
    np.testing.assert_allclose(norms, 1 / np.sqrt(eigenvalues + 1e-8), rtol=1e-3)


def test_whiten_first_conv_sets_the_stem_and_keeps_extra_channels():
    config = make_config(TINY)
    model = build_model(config.model, 0, 10, 1, 16)  # fastnet-small: 16 stem channels, 1-channel input
    images = _correlated_images(side=16)[:, :1]
    before = first_conv(model.encoder).weight.detach().clone()
    conv = whiten_first_conv(model.encoder, images)
    assert conv is first_conv(model.encoder) and conv.weight.requires_grad
    filters = whitening_filters(images, 3)  # 9-d patches: 18 filters, 16 used
    torch.testing.assert_close(conv.weight, filters[:16])
    wide = torch.nn.Conv2d(1, 20, 3, bias=False)  # more channels than filters: the rest keep their init
    kept = wide.weight.detach().clone()
    whiten_first_conv(wide, images)
    torch.testing.assert_close(wide.weight[:18], filters)
    assert torch.equal(wide.weight[18:], kept[18:]) and not torch.equal(before, conv.weight)


@pytest.mark.parametrize("mode", ["init", "frozen"])
def test_fit_with_whitening_trains_and_frozen_stem_stays_put_across_a_resume(tmp_path, mode, monkeypatch):
    config = make_config(TINY, {"model.whiten": mode, "seed": 1, "train.epochs": 3})
    final = fit(config, tmp_path / "run", verbose=False)
    assert final["test_acc"] > 0.5  # 10 classes: chance is 0.1
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    stem = next(k for k in saved if k.endswith("weight") and saved[k].dim() == 4)
    untrained = build_model(config.model, 1, 10, 1, 8)  # digits: 1 channel, 8 px
    data = prepare(config.data, seed=1, batch_size=128, eval_batch_size=1000, device="cpu")
    expected = whiten_first_conv(untrained.encoder, data["train"].sample(5000)).weight
    assert torch.equal(saved[stem], expected) == (mode == "frozen")
    fit_interrupted(config, tmp_path / "cut", 2, monkeypatch)
    fit(config, tmp_path / "cut", resume=True, verbose=False)  # the stem comes from the checkpoint
    assert same_result(tmp_path / "run", tmp_path / "cut")


class _Linear(torch.nn.Module):
    """A position-sensitive model: logits are fixed linear maps of the raw pixels."""

    def __init__(self, in_features, num_classes=4):
        super().__init__()
        self.map = torch.nn.Linear(in_features, num_classes)
        self.head = torch.nn.Identity()

    def forward_features(self, x):
        return self.map(x.flatten(1))

    def forward(self, x):
        return self.head(self.forward_features(x))


def _np_shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved so that output[i, j] = input[i + dy, j + dx], reflecting at the border."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    h, w = x.shape[-2:]
    return padded[:, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


@pytest.mark.parametrize("mode", ["none", "flip", "shift", "flip-shift"])
def test_tta_logits_are_the_weighted_mean_over_views(mode):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)
    loader = BatchLoader(images, torch.arange(10) % 4, 4, [0.5] * 3, [0.25] * 3)
    model = _Linear(3 * 36)
    got = predict(model, loader, tta=mode)["logits"].double().numpy()
    x = ((images.double() / 255 - 0.5) / 0.25).numpy()
    weights = {"none": [(1.0, 0, 0)], "shift": [(0.5, 0, 0), (0.25, 1, 1), (0.25, -1, -1)]}
    weights["flip"] = [(0.5, 0, 0, f) for f in (False, True)]
    weights["flip-shift"] = [(w / 2, dy, dx, f) for w, dy, dx in weights["shift"] for f in (False, True)]
    W, b = model.map.weight.detach().double().numpy(), model.map.bias.detach().double().numpy()
    expected = 0
    for weight, dy, dx, *flip in weights[mode]:
        view = _np_shift(x, dy, dx)
        view = view[..., ::-1] if flip and flip[0] else view
        expected = expected + weight * (view.reshape(10, -1) @ W.T + b)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_fit_reports_tta_accuracy_and_evaluate_agrees(tmp_path, capsys):
    config = make_config(TINY, {"train.tta": "shift"})
    final = fit(config, tmp_path / "run", verbose=False)
    again = evaluate_run(tmp_path / "run", split="test", device="cpu")
    assert again["acc"] == pytest.approx(final["test_acc"], abs=1e-9)
    model = build_model(config.model, 0, 10, 1, 8)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"])
    data = prepare(config.data, seed=0, batch_size=128, eval_batch_size=1000, device="cpu")
    by_hand = predict(model, data["test"], tta="shift")["logits"].argmax(1)
    assert (by_hand == data["test"].labels).double().mean().item() == pytest.approx(final["test_acc"], abs=1e-9)
    plain = (predict(model, data["test"])["logits"].argmax(1) == data["test"].labels).double().mean().item()
    assert evaluate_run(tmp_path / "run", device="cpu", tta="none")["acc"] == pytest.approx(plain, abs=1e-9)
    code, out, err = _cli(capsys, "score", tmp_path / "run", "--tta", "flip")
    assert code == 2 and not out and len(err.strip().splitlines()) == 1 and "without flips" in err
    code, out, _ = _cli(capsys, "score", tmp_path / "run", "--tta", "none")
    assert code == 0 and f"{plain:.4f}" in out and "augmentation" not in out


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_bad_tta_and_whiten_settings_are_one_line_errors():
    with pytest.raises(UserError, match="without flips"):
        make_config(TINY, {"train.tta": "flip"})  # digits are never mirrored in training
    make_config(TINY, {"train.tta": "flip", "data.flip": True})
    with pytest.raises(UserError, match="choose one of: none, flip, shift, flip-shift"):
        make_config(TINY, {"train.tta": "crops"})
    with pytest.raises(UserError, match="choose one of: none, init, frozen"):
        make_config(TINY, {"model.whiten": "pca"})


def test_an_unknown_key_names_the_close_ones():
    with pytest.raises(UserError, match="unknown config key 'train.lrr'; did you mean train.lr"):
        make_config(TINY, {"train.lrr": 0.9})


def test_lookahead_follows_its_recursion_and_ends_on_the_slow_weights():
    """Replay the fast weights the optimizer produced (snapshots taken before each sync) through the
    lookahead recursion in float64: slow <- d slow + (1 - d) fast every k steps and at the last step."""
    config = make_config(TINY, {"train.epochs": 1, "train.lookahead": 3, "model.fixed": True})
    data = prepare(config.data, seed=0, batch_size=64, eval_batch_size=1000, device="cpu")
    model = build_model(config.model, 0, 10, 1, 8)
    optimizer = make_optimizer(model, config.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    total = len(data["train"])
    assert total % 3 != 0  # so that the forced sync at the last step is exercised
    lookahead = Lookahead(model, 3, total)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    statistics = sum(v.numel() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var")))
    assert sum(t.numel() for t in lookahead.state_dict()["slow"]) == trained + statistics  # no copy of fixed vectors
    names = [k for k, v in model.state_dict().items() if v.is_floating_point()]
    start = {k: model.state_dict()[k].double().clone() for k in names}
    before = []

    def on_step():
        before.append({k: model.state_dict()[k].double().clone() for k in names})
        lookahead.step()

    with tqdm(disable=True) as progress:
        stepper = Stepper(optimizer, scheduler, config.train, model, on_step=on_step)
        steps.train_epoch(steps.LossOf(model), data["train"], stepper, config.train, 0, 0, progress)
    assert len(before) == total
    synced = 0
    for name in names:
        slow = start[name]
        for step, fast in enumerate(before, start=1):
            if step % 3 == 0 or step == total:
                decay = 0.95 ** 3 * (step / total) ** 3
                slow = decay * slow + (1 - decay) * fast[name]
                synced += name == names[0]
        torch.testing.assert_close(model.state_dict()[name].double(), slow, rtol=1e-5, atol=1e-6, msg=name)
    assert synced == total // 3 + 1
    weight = "encoder.body.0.weight"
    assert not torch.allclose(before[-1][weight], model.state_dict()[weight].double())  # the sync moved them


def test_fit_with_lookahead_resumes_exactly_and_rejects_bad_values(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.lookahead": 5, "train.epochs": 3})
    final = fit(config, tmp_path / "whole", verbose=False)
    checkpoint = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    steps = len(prepare(config.data, seed=0, batch_size=128, eval_batch_size=1000, device="cpu")["train"])
    assert checkpoint["lookahead"]["step_count"] == 3 * steps  # wired into fit: every step counted
    assert final["test_acc"] > 0.5
    fit_interrupted(config, tmp_path / "cut", 2, monkeypatch)
    fit(config, tmp_path / "cut", resume=True, verbose=False)
    assert same_result(tmp_path / "whole", tmp_path / "cut")
    with pytest.raises(UserError, match="train.lookahead"):
        make_config(TINY, {"train.lookahead": -1})


def test_fit_with_low_res_epochs_shows_the_model_small_images_first_and_resumes_exactly(tmp_path, monkeypatch):
    config = make_config(TINY, {"train.epochs": 3, "data.low_res_size": 12, "data.low_res_epochs": 2})
    real_epoch, sides = BatchLoader.epoch, []

    def watched(self, *args, **kwargs):  # the side of each batch the training loader hands out
        for x, y in real_epoch(self, *args, **kwargs):
            if self.shuffle:  # the training loader's (evaluation reads full-size images)
                sides.append(x.shape[-1])
            yield x, y

    monkeypatch.setattr(BatchLoader, "epoch", watched)
    final = fit(config, tmp_path / "whole", verbose=False)
    monkeypatch.undo()
    per_epoch = len(sides) // 3
    assert sides == [12] * 2 * per_epoch + [16] * per_epoch and final["test_acc"] > 0.5
    fit_interrupted(config, tmp_path / "cut", 1, monkeypatch)
    fit(config, tmp_path / "cut", resume=True, verbose=False)
    assert same_result(tmp_path / "whole", tmp_path / "cut")
