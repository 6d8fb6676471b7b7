"""Class vectors and the dot/cosine head (ClassHead); the blockwise head for very many classes (ManyClassHead)."""

from .class_head import INITS, SIMILARITIES, ClassHead, class_vectors
from .many_classes import VECTORS, ManyClassHead

__all__ = ["ClassHead", "ManyClassHead", "class_vectors", "INITS", "SIMILARITIES", "VECTORS"]
