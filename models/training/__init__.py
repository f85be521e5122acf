"""Training code for the bundled models: `python -m models.training.train_all` rebuilds them all."""
