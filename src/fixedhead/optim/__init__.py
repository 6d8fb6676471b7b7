"""Optimizers (SGD, Muon for convolution filters), learning-rate schedules and lookahead."""
