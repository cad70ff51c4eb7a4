"""MaxQuant (and MaxDIA) ``peptides.txt``, ``evidence.txt`` and ``proteinGroups.txt``."""

from __future__ import annotations

import os
from typing import Literal

import pandas as pd
from anndata import AnnData

from ._assemble import Reading, sample_columns, unrecognised, wide_to_anndata
from ._long import long_to_anndata, unique_names
from ._registry import Format, Header, register
from ._table import find_column, format_names, read_delimited, read_header, require_column

Kind = Literal["peptides", "evidence", "proteinGroups"]
_KINDS = ("peptides", "evidence", "proteinGroups")
# column spellings across MaxQuant versions; the first is the current one
_CONTAMINANT = ("Potential contaminant", "Contaminant")
_LEVEL_COLUMNS = {
    "peptide": ["Sequence"],
    "modified_peptide": ["Modified sequence"],
    "precursor": ["Modified sequence", "Charge"],
}


def read_maxquant(
    path: str | os.PathLike,
    *,
    kind: Kind | None = None,
    intensity: str | None = None,
    sample: Literal["experiment", "raw_file"] | None = None,
    level: Literal["peptide", "modified_peptide", "precursor"] = "peptide",
    drop_contaminants: bool = True,
    drop_reverse: bool = True,
    drop_only_by_site: bool = True,
    aggregate: Literal["sum", "max"] = "sum",
) -> AnnData:
    """Read MaxQuant/MaxDIA ``peptides.txt``, ``evidence.txt`` or ``proteinGroups.txt``.

    Parameters
    ----------
    path
        A table from MaxQuant's ``txt/`` folder (tab-separated).
    kind
        ``"peptides"``, ``"evidence"`` or ``"proteinGroups"``; ``None`` (default) tells them apart
        by their columns.
    intensity
        ``peptides``/``proteinGroups``: prefix of the per-sample columns ``"<prefix> <sample>"``;
        default ``"LFQ intensity"``, or ``"Intensity"`` when the table has no LFQ columns (LFQ
        off; said in ``uns["source"]["notes"]``). ``"Intensity L"`` etc. pick a SILAC channel.
        ``evidence``: the value column, default ``"Intensity"``.
    sample
        ``evidence`` only. ``"experiment"``: one sample per ``Experiment``, summing its raw files
        (what MaxQuant's own peptides.txt does, right for fractions); ``"raw_file"``: one sample
        per run. Default: experiments when each has one raw file or its raw files are fractions
        (a ``Fraction`` column), otherwise raw files, with a warning — runs are never summed into
        fewer samples unless asked.
    level
        ``evidence`` only: features are peptide sequences (``"peptide"``, as in peptides.txt),
        modified sequences (``"modified_peptide"``) or modified sequence + charge
        (``"precursor"``).
    drop_contaminants, drop_reverse, drop_only_by_site
        Drop rows flagged ``+`` in ``Potential contaminant`` (``Contaminant`` in old versions),
        ``Reverse`` (decoys) and, for proteinGroups, ``Only identified by site`` — the filters of
        Perseus, DEP and protti. The flags stay in ``var`` as booleans either way.
    aggregate
        ``evidence`` only: how rows of one feature and sample (charge states, modified forms,
        fractions) are combined: ``"sum"`` (MaxQuant's own peptide intensity) or ``"max"``.

    Returns
    -------
    Samples × peptides (peptides, evidence) or × protein groups (proteinGroups). ``var`` holds
    ``protein`` (``Leading razor protein``; ``Protein IDs`` for protein groups), ``peptide``
    for peptide-level data, ``proteins``, ``genes``, ``reverse``, ``contaminant``; ``obs`` the
    raw files/experiments of evidence. Values are raw intensities, MaxQuant's 0 is NaN.

    Examples
    --------
    >>> adata = omixed.io.read_maxquant("txt/peptides.txt")  # doctest: +SKIP
    >>> runs = omixed.io.read_maxquant("txt/evidence.txt", sample="raw_file")  # doctest: +SKIP
    """
    columns, sep = read_header(path, sep="\t")
    detected = _detect_kind(Header(path, tuple(columns)))
    if kind is None:
        if detected is None:
            raise unrecognised(
                path, "a MaxQuant peptides.txt, evidence.txt or proteinGroups.txt", columns
            )
        kind = detected
    elif kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS} or None, got {kind!r}")
    elif detected is not None and detected != kind:
        raise ValueError(f"{path} looks like MaxQuant {detected}.txt, not {kind}.txt (kind=None)")
    if aggregate not in ("sum", "max"):
        raise ValueError(f"aggregate must be 'sum' or 'max', got {aggregate!r}")
    if level not in _LEVEL_COLUMNS:
        raise ValueError(f"level must be one of {tuple(_LEVEL_COLUMNS)}, got {level!r}")
    if sample not in (None, "experiment", "raw_file"):
        raise ValueError(f"sample must be 'experiment', 'raw_file' or None, got {sample!r}")
    reading = Reading(
        "read_maxquant",
        os.fspath(path),
        f"MaxQuant {kind}.txt",
        {
            "kind": kind,
            "intensity": intensity,
            "drop_contaminants": drop_contaminants,
            "drop_reverse": drop_reverse,
        },
    )
    flags = {
        "reverse": _flag_column(columns, ("Reverse",), drop_reverse, "drop_reverse", path),
        "contaminant": _flag_column(
            columns, _CONTAMINANT, drop_contaminants, "drop_contaminants", path
        ),
    }
    if kind == "proteinGroups":
        flags["only_by_site"] = _flag_column(
            columns, ("Only identified by site",), drop_only_by_site, "drop_only_by_site", path
        )
        reading.options["drop_only_by_site"] = drop_only_by_site
    flags = {key: column for key, column in flags.items() if column is not None}
    drops = {
        "reverse": drop_reverse,
        "contaminant": drop_contaminants,
        "only_by_site": drop_only_by_site,
    }

    if kind == "evidence":
        reading.options.update(sample=sample, level=level, aggregate=aggregate)
        adata, value = _read_evidence(
            path, sep, columns, flags, drops, intensity, sample, level, aggregate, reading
        )
        return reading.finish(adata, level=level, value=value)
    prefix = _default_prefix(columns, intensity, reading)
    if kind == "peptides":
        names = {
            "peptide": require_column(columns, "Sequence", source=path),
            "protein": require_column(columns, "Leading razor protein", source=path),
            "proteins": find_column(columns, "Proteins"),
            "genes": find_column(columns, "Gene names"),
        }
    else:
        names = {
            "protein": require_column(columns, "Protein IDs", source=path),
            "majority_protein_ids": find_column(columns, "Majority protein IDs"),
            "protein_names": find_column(columns, "Protein names"),
            "genes": find_column(columns, "Gene names"),
            "n_peptides": find_column(columns, "Peptides"),
        }
    names = {key: column for key, column in names.items() if column is not None}
    adata = _read_wide(path, sep, columns, names, flags, drops, prefix, reading)
    if kind == "peptides":
        if adata.var["peptide"].duplicated().any():
            duplicated = adata.var["peptide"][adata.var["peptide"].duplicated()]
            raise ValueError(f"{path}: duplicated peptide sequence(s) {format_names(duplicated)}")
        adata.var_names = adata.var["peptide"].to_numpy()
        return reading.finish(adata, level="peptide", value=prefix)
    adata.var_names = adata.var["protein"].to_numpy()
    return reading.finish(adata, level="protein", value=prefix)


def _detect_kind(header: Header) -> Kind | None:
    """evidence.txt has one row per raw file; proteinGroups.txt has ``Protein IDs``."""
    if header.has("Protein IDs", "Majority protein IDs"):
        return "proteinGroups"
    if not header.has("Sequence", "Leading razor protein"):
        return None
    if header.has("Raw file"):
        return "evidence"
    if header.any_starts("Intensity ") or header.any_starts("LFQ intensity "):
        return "peptides"
    return None


def _flag_column(
    columns: list[str], spellings: tuple[str, ...], drop: bool, option: str, path: object
) -> str | None:
    """Find a ``+`` flag column; required only if the caller wants to drop flagged rows."""
    found = find_column(columns, *spellings)
    if found is None and drop:
        raise KeyError(
            f"{path}: missing column {spellings[0]!r} needed to drop flagged rows; "
            f"pass {option}=False to keep all rows"
        )
    return found


def _default_prefix(columns: list[str], intensity: str | None, reading: Reading) -> str:
    if intensity is not None:
        return intensity
    if any(c.startswith("LFQ intensity ") for c in columns):
        return "LFQ intensity"
    reading.note("no 'LFQ intensity' columns (LFQ was off): read the 'Intensity <sample>' columns")
    return "Intensity"


def _filter_flags(
    frame: pd.DataFrame, flags: dict[str, str], drops: dict[str, bool], reading: Reading
) -> pd.DataFrame:
    """Turn '+' flags into booleans and drop the flagged rows the caller asked to drop."""
    for key, column in flags.items():
        frame[key] = frame.pop(column).eq("+").to_numpy()
    for key in flags:
        if drops[key]:
            frame = reading.drop(frame, frame[key].to_numpy(), f"flagged {key.replace('_', ' ')}")
    return frame


def _read_wide(
    path: str | os.PathLike,
    sep: str,
    columns: list[str],
    names: dict[str, str],
    flags: dict[str, str],
    drops: dict[str, bool],
    prefix: str,
    reading: Reading,
) -> AnnData:
    """peptides.txt / proteinGroups.txt: one row per feature, samples in ``"<prefix> <sample>"``."""
    value_columns = sample_columns(columns, prefix=prefix + " ")
    if not value_columns:
        raise KeyError(
            f"{path}: no '{prefix} <sample>' columns; intensity prefixes present: "
            f"{format_names(_intensity_prefixes(columns)) or 'none'}; pass intensity=<prefix>"
        )
    # SILAC tables have "Intensity L <sample>" next to "Intensity <sample>": the plain prefix
    # would read the channels as extra samples
    labelled = [
        f"{prefix} {label}"
        for label in ("L", "M", "H")
        if any(c.startswith(f"{prefix} {label} ") for c in columns)
    ]
    if labelled:
        raise ValueError(
            f"{path} holds labelled channels ({format_names(labelled)}); "
            "pass one of them as intensity="
        )
    text = [*names.values(), *flags.values()]
    frame = read_delimited(
        path, sep=sep, usecols=[*text, *value_columns.values()], dtype=dict.fromkeys(text, str)
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={column: key for key, column in names.items()})
    frame = reading.drop_missing(frame, "protein", "protein")
    frame = _filter_flags(frame, flags, drops, reading)
    var = frame[[*names, *flags]]
    return wide_to_anndata(frame, value_columns, var, source=path)


def _intensity_prefixes(columns: list[str]) -> list[str]:
    """Prefixes ending in 'intensity' with per-sample columns, e.g. 'Intensity', 'LFQ intensity'."""
    cut = {c: c.lower().find("intensity ") + len("intensity") for c in columns}
    prefixes = {c[:end] for c, end in cut.items() if end >= len("intensity")}
    return sorted(p for p in prefixes if any(c.startswith(p + " ") for c in columns))


def _read_evidence(
    path: str | os.PathLike,
    sep: str,
    columns: list[str],
    flags: dict[str, str],
    drops: dict[str, bool],
    intensity: str | None,
    sample: Literal["experiment", "raw_file"] | None,
    level: str,
    aggregate: Literal["sum", "max"],
    reading: Reading,
) -> tuple[AnnData, str]:
    """evidence.txt: long, one row per feature × raw file; rows of a feature and sample combined."""
    value = require_column(columns, intensity or "Intensity", source=path)
    names = {
        "raw_file": require_column(columns, "Raw file", source=path),
        "peptide": require_column(columns, "Sequence", source=path),
        "protein": require_column(columns, "Leading razor protein", source=path),
    }
    if level != "peptide":
        names.update({c: require_column(columns, c, source=path) for c in _LEVEL_COLUMNS[level]})
    optional = {
        "experiment": find_column(columns, "Experiment"),
        "fraction": find_column(columns, "Fraction"),
        "proteins": find_column(columns, "Proteins"),
        "genes": find_column(columns, "Gene names"),
    }
    names.update({k: c for k, c in optional.items() if c is not None})
    text = [c for key, c in names.items() if key != "Charge"] + list(flags.values())
    frame = read_delimited(
        path,
        sep=sep,
        usecols=[*dict.fromkeys([*names.values(), *flags.values(), value])],
        dtype=dict.fromkeys(text, str),
    )
    reading.rows_read = len(frame)
    frame = frame.rename(columns={c: k for k, c in names.items() if k not in _LEVEL_COLUMNS[level]})
    frame = reading.drop_missing(frame, "protein", "protein")
    frame = _filter_flags(frame, flags, drops, reading)
    sample = _choose_sample(frame, sample, reading)
    runs = frame.groupby(sample, sort=False)["raw_file"].agg(lambda s: ";".join(pd.unique(s)))
    feature = list(_LEVEL_COLUMNS[level]) if level != "peptide" else ["peptide"]
    annotations = {k: k for k in ("peptide", "protein", "proteins", "genes", *flags) if k in frame}
    for key in feature:
        annotations.pop(key, None)
    frame["value"] = frame.pop(value)
    adata = long_to_anndata(
        frame,
        sample=sample,
        feature=feature,
        value="value",
        annotations=annotations,
        aggregate=aggregate,
        source=path,
    )
    adata.obs["raw_files"] = runs.reindex(adata.obs_names).to_numpy()
    if sample == "raw_file" and "experiment" in frame:
        experiment = frame.groupby("raw_file", sort=False)["experiment"].first()
        adata.obs["experiment"] = experiment.reindex(adata.obs_names).to_numpy()
    if level == "peptide":
        adata.var_names = adata.var["peptide"].astype(str).to_numpy()
    else:
        key = adata.var["Modified sequence"].astype(str)
        if level == "precursor":
            key = key + "/" + adata.var["Charge"].astype(int).astype(str)
        adata.var_names = unique_names(key, adata.var["protein"], source=path)
        adata.var = adata.var.rename(
            columns={"Modified sequence": "modified_sequence", "Charge": "charge"}
        )
    return adata, value


def _choose_sample(
    frame: pd.DataFrame, sample: Literal["experiment", "raw_file"] | None, reading: Reading
) -> str:
    """The evidence column that names samples (see ``read_maxquant``'s ``sample``)."""
    if sample == "raw_file":
        return "raw_file"
    if "experiment" not in frame:
        if sample == "experiment":
            raise KeyError(f"{reading.path}: no 'Experiment' column; use sample='raw_file'")
        return "raw_file"
    missing = frame["experiment"].isna()
    if missing.any():
        raise ValueError(
            f"{reading.path}: {int(missing.sum())} row(s) have an empty 'Experiment'; "
            "pass sample='raw_file' to name samples by raw file"
        )
    per_experiment = frame.groupby("experiment")["raw_file"].nunique()
    grouped = per_experiment[per_experiment > 1]
    if sample == "experiment" or grouped.empty:
        if not grouped.empty:
            reading.note(
                f"raw files summed into {len(grouped)} experiment(s) (sample='experiment')"
            )
        return "experiment"
    if "fraction" in frame:
        fractions = frame.groupby(["experiment", "raw_file"])["fraction"].first()
        if not fractions.groupby(level=0).apply(lambda f: f.duplicated().any()).any():
            reading.note(f"fractions summed into {len(grouped)} experiment(s)")
            return "experiment"
    shown = ", ".join(f"{e!r} ({n} runs)" for e, n in grouped.head(5).items())
    reading.note(
        f"'Experiment' groups several raw files ({shown}) that are not fractions: kept one sample "
        "per raw file; pass sample='experiment' to sum them",
        warn=True,
    )
    return "raw_file"


register(
    *(
        Format(f"MaxQuant {kind}.txt", lambda h, k=kind: _detect_kind(h) == k, read_maxquant)
        for kind in _KINDS
    )
)
