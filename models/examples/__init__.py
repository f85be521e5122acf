"""Runnable client examples, one per bundled model: `python -m models.examples.<name>`."""
