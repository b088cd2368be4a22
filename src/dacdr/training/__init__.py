"""Training: the one trainer, checkpoints and evaluation."""
