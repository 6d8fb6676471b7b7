"""fixedhead: fixed (random, frozen) or learned dot/cosine classification heads for image classifiers."""

from .evaluation.analysis import analyze
from .heads.class_head import ClassHead, class_vectors
from .heads.many_classes import ManyClassHead
from .models.classifier import ENCODERS, Classifier, build_encoder, swap_head
from .training.fit import fit
from .version import VERSION as __version__

__all__ = ["ClassHead", "ManyClassHead", "class_vectors", "Classifier", "ENCODERS", "build_encoder", "swap_head", "fit",
           "analyze", "__version__"]
