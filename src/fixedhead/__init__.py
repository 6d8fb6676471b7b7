"""fixedhead: fixed (random, frozen) or learned dot/cosine classification heads for image classifiers.

The names below load on first use, so that `import fixedhead.config` (or `fixedhead --version`) does not
import torch.
"""

from importlib import import_module

from .version import VERSION as __version__

_PUBLIC = {"ClassHead": "heads", "ManyClassHead": "heads", "class_vectors": "heads", "Classifier": "models",
           "ENCODERS": "models", "build_encoder": "models", "swap_head": "models", "fit": "training.fit",
           "analyze": "evaluation.analysis"}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
