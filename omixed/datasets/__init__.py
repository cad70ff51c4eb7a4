"""Simulated example data with a known truth (batch-free values and per-feature parameters)."""

from ._example import example, example_peptides

__all__ = ["example", "example_peptides"]
