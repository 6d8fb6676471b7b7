"""Learning-rate schedules: a multiplier of the peak learning rate at each optimizer step.

A linear warm-up from `start` (a fraction of the peak) over `warmup` steps, then the schedule's decay over
the remaining steps, to `final` where the schedule has an end value. `plateau` is constant here: torch's
ReduceLROnPlateau acts on it once per epoch, on a validation metric (PLATEAU_MODES).
"""

from __future__ import annotations

import math
from typing import Literal

from ..errors import UserError


def _linear(progress: float, final: float) -> float:
    return final + (1 - final) * max(1.0 - progress, 0.0)


def _cosine(progress: float, final: float) -> float:
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(progress: float, final: float) -> float:
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))  # x0.1 at half and at three quarters


def _constant(progress: float, final: float) -> float:
    return 1.0


# train.schedule: the multiplier after the warm-up, from the fraction of those steps done
SCHEDULES = {"linear": _linear, "cosine": _cosine, "step": _step, "constant": _constant, "plateau": _constant}

# train.plateau_on: what ReduceLROnPlateau watches on validation, and which way is better
PLATEAU_MODES: dict[str, Literal["min", "max"]] = {"loss": "min", "acc": "max"}


def lr_factor(step: int, total: int, warmup: int, schedule: str, final: float = 0.0, start: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` of `total`."""
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if schedule == "plateau":
        return 1.0  # no warm-up either: the plateau schedule is the authors', unchanged
    if step < warmup:
        return start + (1 - start) * (step + 1) / warmup
    return SCHEDULES[schedule]((step - warmup) / max(1, total - warmup), final)
