"""Benchmarks that users run as modules (``python -m f2c.benchmarks.cost_curve``)."""
