"""Simulated example data with a known truth (batch-free values and per-feature parameters),
also as the files proteomics tools write."""

from ._example import example, example_peptides
from ._files import example_files

__all__ = ["example", "example_files", "example_peptides"]
