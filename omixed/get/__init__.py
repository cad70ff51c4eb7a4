"""Accessors for stored results (as ``scanpy.get``): the fitted model and its per-feature table."""

from ._fit import fit_df, model

__all__ = ["fit_df", "model"]
