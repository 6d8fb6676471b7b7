"""Training one run: fit (the run folder, the loop over epochs), one epoch of steps, torchrun support."""
