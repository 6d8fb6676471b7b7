"""Encoders, library models by name (timm, torchvision), the Classifier (encoder + head) and patch whitening."""

from .classifier import ENCODERS, Classifier, build_encoder, build_model, swap_head

__all__ = ["ENCODERS", "Classifier", "build_encoder", "build_model", "swap_head"]
