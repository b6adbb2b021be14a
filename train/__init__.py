"""Training and evaluation of Leffa models (datasets, trainer, metrics)."""
