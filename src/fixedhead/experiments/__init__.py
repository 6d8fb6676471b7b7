"""Experiment files, sweeps over them, reports with statistics over seeds, and the demo."""
