"""Optimizers (SGD, Muon for convolution filters), learning-rate schedules and lookahead."""

from .optimizers import OPTIMIZERS, make_optimizer, parameter_groups, sgd_hyperparameters
from .schedules import PLATEAU_MODES, SCHEDULES, lr_factor

__all__ = ["OPTIMIZERS", "SCHEDULES", "PLATEAU_MODES", "make_optimizer", "parameter_groups", "sgd_hyperparameters",
           "lr_factor"]
