"""Helpers for tests that stop training and resume it: wait for a file, compare two runs exactly,
stop an in-process run inside a chosen epoch."""

import json
import time

import pytest
import torch

from fixedhead import fit
from fixedhead.training import fit as train_mod


def weights(run):
    return torch.load(run / "model.pt", weights_only=True)["model"]


def same_result(a, b) -> bool:
    """Two run folders hold the same final metrics, per-epoch metrics (timings aside) and weights, bit for bit."""
    fa, fb = (json.loads((r / "final.json").read_text()) for r in (a, b))
    keys = ("test_acc", "test_loss", "epochs", "selected_epoch", "status", "train_losses", "train_loss_end")
    ma, mb = ([{k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
               for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b))
    wa, wb = weights(a), weights(b)
    return all(fa[k] == fb[k] for k in keys) and ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)


def fit_interrupted(config, run_dir, epoch_index: int, monkeypatch) -> None:
    """Run `fit` until epoch `epoch_index` (0-based) starts, then interrupt it as Ctrl-C would."""
    real_epoch = train_mod.train_epoch

    def dies(*args, **kwargs):
        if args[5] == epoch_index:  # train_epoch's epoch argument
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir, verbose=False)
    monkeypatch.setattr(train_mod, "train_epoch", real_epoch)
