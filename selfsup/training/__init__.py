"""Experiment definition, config loading, the training loop and checkpoints."""
