"""Encoders from timm and torchvision by name: model.arch `timm:NAME` or `torchvision:NAME`.

The model is built by its library (random weights, or the library's pretrained ones with
model.pretrained), its classifier removed, and it is used as an encoder like the built-in ones: the
encoder *is* the library's model, so a checkpoint's `encoder.` keys are the bare model's keys
(models.bare_state_dict). Channels and input size come from the data: timm adapts the first
convolution itself (`in_chans`); for torchvision the first 3-channel convolution is replaced (grey
images: its filters summed over colour, as timm does). One forward pass at the data's size before
training decides whether the model can take it; a model that cannot (a ViT with a fixed patch grid)
is refused with one line. torchvision's Inception v3 and GoogLeNet lose their auxiliary classifiers
(drop_auxiliary), so training uses their main output, and are built with their published
initialisation asked for by name (init_weights=True: what torchvision does today, with a FutureWarning
that its default will change), so that a run means the same network after a torchvision upgrade.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..errors import UserError, reason, shown

LIBRARIES = ("timm", "torchvision")  # the prefix is the package's name
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def is_library_arch(arch: str) -> bool:
    return isinstance(arch, str) and arch.partition(":")[0] in LIBRARIES and ":" in arch


def _library(prefix: str):
    try:
        if prefix == "timm":
            import timm

            return timm
        import torchvision.models

        return torchvision.models
    except ImportError:
        raise UserError(f"model.arch {prefix}:... needs the {prefix} package: pip install 'fixedhead[{prefix}]'") from None


def check_name(arch: str) -> None:
    """Refuse, in one line, a library model name that does not exist (with the nearest names)."""
    prefix, _, name = arch.partition(":")
    library = _library(prefix)
    if _NAME.fullmatch(name) and (library.is_model(name) if prefix == "timm" else name in library.list_models()):
        return
    near = difflib.get_close_matches(name, library.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(f'{prefix}:{n}' for n in near)}? " if near else ""
    stem = re.split(r"[_.\-\d]", name)[0][:30] if _NAME.fullmatch(name) else ""
    lister = f"timm.list_models('*{stem}*')" if prefix == "timm" else "torchvision.models.list_models()"
    raise UserError(f"unknown {prefix} model {name[:100]!r} (model.arch); {hint}list the names with: "
                    f"python -c \"import {prefix}{'.models' if prefix == 'torchvision' else ''}; print({lister})\"")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name, module
    if found is None:
        raise UserError(f"{type(model).__name__} has no nn.Linear layer to replace with a ClassHead")
    return found


def remove_last_linear(model: nn.Module) -> nn.Linear:
    """Replace the model's last nn.Linear (its classifier) by nn.Identity; returns the removed layer."""
    name, linear = _last_linear(model)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return linear


def drop_auxiliary(model: nn.Module) -> None:
    """Remove the auxiliary classifiers of torchvision's Inception v3 and GoogLeNet, whose training
    forward would otherwise return (main, auxiliary) outputs: training then sees the main output."""
    if getattr(model, "aux_logits", False):
        cast(Any, model).aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            return parent, name.rpartition(".")[2], module
    return None


def _adapt_channels(model: nn.Module, arch: str, in_channels: int, pretrained: bool) -> None:
    found = _first_conv(model)
    if in_channels == 3 or found is None or found[2].in_channels != 3:
        return
    parent, attr, conv = found
    if in_channels != 1 or conv.groups != 1:
        raise UserError(f"{arch} takes 3-channel images; the data has {in_channels} channels (1 or 3 work)")
    shape: dict[str, Any] = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
                             "dilation": conv.dilation}
    new = nn.Conv2d(1, conv.out_channels, bias=conv.bias is not None, padding_mode=conv.padding_mode, **shape)
    if pretrained:  # grey = the sum of the colour filters' responses to equal R, G and B
        with torch.no_grad():
            new.weight.copy_(conv.weight.sum(1, keepdim=True))
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
    setattr(parent, attr, new)


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _timm_create(timm, name: str, pretrained: bool, in_channels: int) -> nn.Module:
    """timm.create_model; pretrained weights from the Hugging Face cache first, the network only when
    the host answers (offline, the hub would retry for a minute, printing a line per retry)."""
    def create():
        return timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
    if not pretrained:
        return create()
    from huggingface_hub import constants

    was_offline = constants.HF_HUB_OFFLINE  # the user's setting, restored below
    constants.HF_HUB_OFFLINE = True
    try:
        return create()
    except Exception:
        if was_offline or not _reachable("huggingface.co"):
            raise UserError(_not_cached(f"timm:{name}", "huggingface.co")) from None
    finally:
        constants.HF_HUB_OFFLINE = was_offline
    return create()


def _not_cached(arch: str, host: str) -> str:
    return (f"the pretrained weights of {arch} are not in the local cache and {host} cannot be reached; run once "
            "with internet to download them, or set model.pretrained=false")


PUBLISHED_INIT = ("googlenet", "inception_v3")  # torchvision models whose default init is announced to change


def _torchvision_create(models, name: str, pretrained: bool) -> nn.Module:
    """torchvision.models.get_model, checking first that pretrained weights are cached or reachable."""
    if pretrained:
        import os

        url = models.get_model_weights(name).DEFAULT.url
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        host = url.split("/")[2]
        if not os.path.exists(cached) and not _reachable(host):
            raise UserError(_not_cached(f"torchvision:{name}", host))
    if not pretrained and name in PUBLISHED_INIT:
        return models.get_model(name, weights=None, init_weights=True)
    off = {}
    if not pretrained and "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        off = {"weights_backbone": None}  # detection and segmentation builders default to an ImageNet backbone
    model = models.get_model(name, weights="DEFAULT" if pretrained else None, **off)
    if pretrained:  # the normalisation those weights were trained with (data_config)
        preset = models.get_model_weights(name).DEFAULT.transforms()
        model.fixedhead_data_config = {"mean": list(preset.mean), "std": list(preset.std),
                                       "input_size": getattr(preset, "crop_size", [None])[0]}
    return model


def _create(arch: str, in_channels: int, pretrained: bool) -> nn.Module:
    prefix, _, name = arch.partition(":")
    library = _library(prefix)
    check_name(arch)
    try:
        if prefix == "timm":
            return _timm_create(library, name, pretrained, in_channels)
        model = _torchvision_create(library, name, pretrained)
    except UserError:
        raise
    except Exception as error:  # a download that fails offline, a model that refuses the options
        if pretrained:
            raise UserError(f"could not load the pretrained weights of {arch} ({reason(error)}); they are downloaded once "
                            f"into {prefix}'s cache, which needs internet; or set model.pretrained=false") from None
        raise UserError(f"{prefix} could not build {name} with {in_channels} input channels ({reason(error)})") from None
    drop_auxiliary(model)
    remove_last_linear(model)
    _adapt_channels(model, arch, in_channels, pretrained)
    return model


def build(arch: str, in_channels: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """The library's model without its classifier, taking (B, in_channels, image_size, image_size)
    images to (B, num_features) features; `num_features` is measured by one forward pass."""
    model = _create(arch, in_channels, pretrained)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as error:
        size = getattr(model, "pretrained_cfg", {}).get("input_size")
        fixed = f"; this one was made for {size[1]}x{size[2]} (set data.image_size={size[1]})" if size else ""
        raise UserError(f"{arch} cannot take {in_channels}x{image_size}x{image_size} images ({reason(error)}); models with "
                        f"global pooling (resnets, convnexts, efficientnets) take any size{fixed}") from None
    finally:
        model.train()
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(f"{arch} gives {type(out).__name__} {tuple(getattr(out, 'shape', ()))} where features (batch, "
                        "width) were expected once its classifier is removed; choose a model with a pooled output")
    # timm: num_features is the pooled width; the output is wider when the model has a pre-logits layer
    cast(Any, model).num_features = out.shape[1]
    return model


def versions(arch: str) -> dict:
    """{"timm": "1.0.31"} for a library model (recorded in the run's meta), {} for a built-in encoder."""
    if not is_library_arch(arch):
        return {}
    prefix = arch.partition(":")[0]
    import importlib.metadata

    return {prefix: importlib.metadata.version(prefix)}


CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads", "last_linear")  # torchvision's and timm's usual names


def load_encoder_weights(encoder: nn.Module, path) -> None:
    """Load a local weights file into an encoder, strictly: every encoder tensor must be in the file with its
    shape; keys the encoder lacks are allowed only under the library model's own classifier (timm's
    pretrained_cfg "classifier", or fc / classifier / head), which the fixed or learned head replaces.
    safetensors files are read with safetensors; anything else as a weights-only torch file (no code runs)."""
    from ..files import check_regular, load_torch

    path = check_regular(Path(path), "weights file")
    if not path.is_file():
        raise UserError(f"model.weights: {path} is not a file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError("model.weights in safetensors needs safetensors: pip install safetensors") from None
        try:
            state: Any = load_file(str(path))
        except Exception as error:  # safetensors raises its own errors on a damaged header
            raise UserError(f"cannot read {path} as safetensors ({reason(error)})") from None
    else:
        state = load_torch(path, "weights file")
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict (a mapping of names to tensors)")
    own = encoder.state_dict()
    heads = {getattr(encoder, "pretrained_cfg", {}).get("classifier") or "", *CLASSIFIER_NAMES} - {""}
    foreign = [k for k in state if k not in own and k.split(".")[0] not in heads and
               not any(k.startswith(h + ".") for h in heads)]
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    for problem, keys in (("has tensors the encoder does not", foreign), ("lacks the encoder's tensors", missing),
                          ("has other shapes for", wrong)):
        if keys:
            raise UserError(f"model.weights: {path} {problem} ({len(keys)}, e.g. {shown(keys[0])}); give weights "
                            f"of this model.arch")
    encoder.load_state_dict({k: state[k] for k in own})


def pretrained_input_size(arch: str) -> int | None:
    """The image side a library model's pretrained weights were trained at (timm's pretrained config,
    torchvision's weights' transforms), read without building the model or downloading anything; None
    for a built-in encoder or a model with no such record."""
    if not is_library_arch(arch):
        return None
    prefix, _, name = arch.partition(":")
    library = _library(prefix)
    try:
        if prefix == "timm":
            cfg = library.models.get_pretrained_cfg(name)
            return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
        crop = getattr(library.get_model_weights(name).DEFAULT.transforms(), "crop_size", None)
        return int(crop[0]) if crop else None
    except (ValueError, KeyError, AttributeError, RuntimeError):  # a name the library cannot say this for
        return None


def data_config(encoder: nn.Module) -> dict | None:
    """The normalisation a pretrained library model was trained with: {"mean", "std", "input_size"}
    (timm's resolve_data_config; torchvision's weights' transforms), or None where the model says none."""
    cfg = getattr(encoder, "pretrained_cfg", None)
    if cfg:
        from timm.data import resolve_data_config

        resolved = resolve_data_config({}, model=encoder)
        return {"mean": list(resolved["mean"]), "std": list(resolved["std"]), "input_size": resolved["input_size"][-1]}
    return getattr(encoder, "fixedhead_data_config", None)
