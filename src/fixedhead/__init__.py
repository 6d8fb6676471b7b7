"""fixedhead: fixed (random, frozen) or learned dot/cosine classification heads for image classifiers."""

from .analysis import analyze
from .heads import ClassHead, class_vectors
from .many_classes import ManyClassHead
from .models import ENCODERS, Classifier, build_encoder, swap_head
from .train import fit
from .version import VERSION as __version__

__all__ = ["ClassHead", "ManyClassHead", "class_vectors", "Classifier", "ENCODERS", "build_encoder", "swap_head", "fit",
           "analyze", "__version__"]
