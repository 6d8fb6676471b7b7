"""Encoders, library models by name (timm, torchvision), the Classifier (encoder + head) and patch whitening."""

from .classifier import ENCODERS, NECKS, Classifier, build_encoder, build_model, swap_head
from .encoders import POOLS
from .whitening import WHITENING

__all__ = ["ENCODERS", "NECKS", "POOLS", "WHITENING", "Classifier", "build_encoder", "build_model", "swap_head"]
