"""Readers: proteomics tool outputs and generic tables to samples × features AnnData."""

from ._alphadia import read_alphadia
from ._alphapept import read_alphapept
from ._diann import read_diann
from ._fragpipe import read_fragpipe
from ._long import read_long
from ._maxquant import read_maxquant
from ._msstats import read_msstats
from ._peaks import read_peaks
from ._proteome_discoverer import read_proteome_discoverer
from ._read import read, reader_for
from ._sage import read_sage
from ._samplesheet import join_sample_sheet
from ._spectronaut import read_spectronaut
from ._table import read_table

__all__ = [
    "join_sample_sheet",
    "read",
    "read_alphadia",
    "read_alphapept",
    "read_diann",
    "read_fragpipe",
    "read_long",
    "read_maxquant",
    "read_msstats",
    "read_peaks",
    "read_proteome_discoverer",
    "read_sage",
    "read_spectronaut",
    "read_table",
    "reader_for",
]
