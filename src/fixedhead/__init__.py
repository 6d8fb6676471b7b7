"""fixedhead: fixed (random, frozen) or learned dot/cosine classification heads for image classifiers."""

__version__ = "0.1.0"

from .analysis import analyze  # noqa: E402
from .heads import ClassHead, class_vectors  # noqa: E402
from .many_classes import ManyClassHead  # noqa: E402
from .models import ENCODERS, Classifier, build_encoder, swap_head  # noqa: E402
from .train import fit  # noqa: E402

__all__ = ["ClassHead", "ManyClassHead", "class_vectors", "Classifier", "ENCODERS", "build_encoder", "swap_head", "fit",
           "analyze", "__version__"]
