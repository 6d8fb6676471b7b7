"""The GPU-hours estimate of a planned sweep: its FLOPs against published counts and analytic ones, its
steps against what fit actually plans, its sizes against the datasets' files."""

import dataclasses
import math

import pytest
import torch

from fixedhead.cli import main
from fixedhead.config import make_config, needs_validation
from fixedhead.data import DATASETS, load
from fixedhead.data.loaders import prepare
from fixedhead.experiments import cost
from fixedhead.training.fit import planned_steps


def test_forward_flops_match_torchvisions_published_counts():
    """torchvision publishes each model's GFLOPS (multiply-adds) at 224 px; ours counts 2 per multiply-add."""
    torchvision = pytest.importorskip("torchvision")
    for arch, weights in (("resnet18", torchvision.models.ResNet18_Weights), ("mobilenet_v2",
                                                                               torchvision.models.MobileNet_V2_Weights)):
        step = cost.step_cost(make_config({"model.arch": f"torchvision:{arch}"}, {}).model, 1000, 3, 224)
        published = weights.DEFAULT.meta["_ops"]  # GFLOPS, 3 decimals
        assert step.eval_flops / 2e9 == pytest.approx(published, abs=6e-4)
        assert step.train_flops == 3 * step.eval_flops and step.host_s > 0


def test_flops_of_a_linear_model_are_the_analytic_count(monkeypatch):
    """An encoder of one linear layer d x (c h w) and a dot head C x d: 2 (c h w d + d C) per image forward."""
    from fixedhead.heads.class_head import ClassHead
    from fixedhead.models import classifier

    def linear_model(model_cfg, seed, num_classes, in_channels, image_size):
        encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size ** 2, 7, bias=False))
        encoder.num_features = 7
        return classifier.Classifier(encoder, ClassHead(7, num_classes, "dot", fixed=model_cfg.fixed))

    monkeypatch.setattr(classifier, "build_model", linear_model)
    step = cost.step_cost(make_config({}, {}).model, 5, 3, 4)
    assert step.eval_flops == 2 * (3 * 4 * 4 * 7 + 7 * 5)


@pytest.mark.parametrize("overrides", [
    {},
    {"train.batch_size": 100, "train.epochs": 2.5, "train.schedule": "plateau"},
    {"train.batch_size": 64, "train.images_seen": 5000, "data.val_fraction": 0.2},
    {"train.batch_size": 32, "data.imbalance": 10, "train.epochs": 3, "train.log_test": True},
    {"train.batch_size": 5000, "train.epochs": 2},
])
def test_the_plan_counts_steps_and_images_as_fit_does(overrides):
    for name in ("digits", "fashion-mnist-mini"):
        config = make_config({"data.name": name, **overrides}, {})
        shape = DATASETS[name].size(config.data)
        train, test = load(name, split="train"), load(name, split="test")
        assert shape == (len(train), len(test), *train.images.shape[1:3], len(train.classes))
        data = prepare(config.data, seed=0, batch_size=config.train.batch_size, eval_batch_size=1000,
                       device=torch.device("cpu"), with_val=needs_validation(config))
        plan = cost.plan(config, shape)
        steps = planned_steps(config.train, data["train"])
        epochs = math.ceil(steps / len(data["train"]))
        val = len(data["val"].labels) if "val" in data else 0
        evaluated = val * epochs + len(data["test"].labels) * (epochs if config.train.log_test else 1)
        if name == "digits":  # 174-183 images a class: the plan's hold-out is off by up to one image a class
            assert abs(plan.steps - steps) <= 0.01 * steps
            assert abs(plan.evaluated - evaluated) <= 10 * epochs  # one image of 10 classes, each validation
        else:  # balanced, as the published sets are: exact
            assert plan.steps == steps and plan.evaluated == evaluated


def test_the_estimate_is_bound_by_arithmetic_or_by_the_host():
    big = make_config({"data.name": "cifar10", "model.arch": "resnet18", "train.batch_size": 512}, {})
    small = dataclasses.replace(big, train=dataclasses.replace(big.train, batch_size=1))
    fast, slow = (cost.estimate([("big", big)], rate) for rate in (200.0, 100.0))
    assert slow.gpu_hours == pytest.approx(2 * fast.gpu_hours) and slow.flops == fast.flops
    # one image a step: the host issuing its operations sets the pace, whatever the rate
    host_bound = [cost.estimate([("small", small)], rate) for rate in (200.0, 100.0)]
    step = cost.step_cost(big.model, 10, 3, 32)
    plan = cost.plan(small, DATASETS["cifar10"].size(small.data))
    assert host_bound[1].gpu_hours * 3600 == pytest.approx(plan.steps * step.host_s + step.eval_flops * plan.evaluated
                                                             / 100e12)
    assert host_bound[0].gpu_hours < host_bound[1].gpu_hours < 1.01 * host_bound[0].gpu_hours
    unknown = cost.estimate([("folder", make_config({"data.name": "imagefolder"}, {}))])
    assert unknown.not_estimated == ["folder"] and unknown.gpu_hours == 0 and "1 run(s) not estimated" in unknown.line()


def test_a_cluster_dry_run_ends_with_the_estimate(tmp_path, capsys):
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: e\nbase: {data.name: cifar10, model.arch: fastnet-small, train.epochs: 2}\n"
                          "variants: {fixed: {model.fixed: true}, learned: {model.fixed: false}}\nseeds: 2\n")
    assert main(["sweep", str(experiment), "--out", str(tmp_path / "o"), "--on", "slurm", "--dry-run",
                 "--gpu-tflops", "50"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    expected = cost.estimate([(str(i), make_config({"data.name": "cifar10", "model.arch": "fastnet-small",
                                                    "train.epochs": 2}, {})) for i in range(4)], 50.0)
    assert last == expected.line() and "for 4 run(s)" in last and not (tmp_path / "o").exists()
    assert main(["sweep", str(experiment), "--out", str(tmp_path / "o"), "--on", "ray", "--dry-run",
                 "--gpu-tflops", "0"]) == 2
    assert "--gpu-tflops: takes a number above 0, got '0'" in capsys.readouterr().err


def test_a_pretrained_model_is_estimated_at_the_side_fit_will_resize_to():
    """--pretrained with no data.image_size trains at the model's pretrained side (fit.pretrained_input_size):
    the plan counts that side, 224 px for torchvision's resnet18, not CIFAR's 32."""
    pytest.importorskip("torchvision")
    base = {"data.name": "cifar10", "model.arch": "torchvision:resnet18", "train.epochs": 1}
    native, pretrained = (cost.estimate([("r", make_config({**base, **extra}, {}))])
                          for extra in ({}, {"model.pretrained": True}))
    expected = cost.step_cost(make_config(base, {}).model, 10, 3, 224).eval_flops
    assert pretrained.flops / native.flops > 30
    # one epoch of 390 full batches of 128 (3 x the forward each image) and one pass over the 10,000 test images
    assert pretrained.flops == pytest.approx(expected * (3 * 390 * 128 + 10_000), rel=1e-9)
