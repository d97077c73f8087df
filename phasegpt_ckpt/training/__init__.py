"""Training runs: configs, the trainer, its optimizer and schedule, RNG state, progress and metrics."""
