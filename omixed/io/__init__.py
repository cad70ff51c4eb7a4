"""Readers: proteomics tool outputs and generic tables to samples × features AnnData."""

from ._diann import read_diann
from ._long import read_long
from ._maxquant import read_maxquant
from ._samplesheet import join_sample_sheet
from ._table import read_table

__all__ = ["join_sample_sheet", "read_diann", "read_long", "read_maxquant", "read_table"]
