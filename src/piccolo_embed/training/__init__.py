"""Training: typed config, the recipe wiring and a small explicit loop on ``accelerate``."""
