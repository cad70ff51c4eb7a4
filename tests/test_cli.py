"""The ``omixed`` command line: each subcommand, a chained run against the package API, errors.

Commands run in-process through :func:`omixed.cli.main` (a new interpreter costs seconds of
imports); one test runs the installed console script to check the entry point and exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import omixed
from omixed.cli import main

FORMULA = "~ condition + (1|batch) + (1|donor)"
COMMANDS = ["import", "normalize", "split", "fit", "merge", "correct", "export", "plot"]


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def files_in(directory: Path) -> set[str]:
    """Every file name in ``directory``, hidden temporary files included."""
    return {p.name for p in directory.iterdir()}


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    """The example data cut to 60 features: fast to fit, same design."""
    return omixed.datasets.example()[:, :60].copy()


@pytest.fixture
def small_h5ad(tmp_path: Path, small: ad.AnnData) -> Path:
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def reference(small: ad.AnnData) -> ad.AnnData:
    """The package API on the same data: median centring, fit, correct, variance partition."""
    adata = small.copy()
    omixed.pp.median_center(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(adata, FORMULA, progress=False)
    omixed.tl.correct(adata, remove=["batch"])
    omixed.tl.variance_partition(adata)
    return adata


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run(command, "--help")
    assert exit_info.value.code == 0
    assert f"usage: omixed {command}" in capsys.readouterr().out


def test_chunked_run_equals_package_api(
    tmp_path: Path, small_h5ad: Path, reference: ad.AnnData
) -> None:
    d = tmp_path
    assert run("import", "h5ad", small_h5ad, "-o", d / "imported.h5ad") == 0
    steps = ["--steps", "median_center"]
    assert run("normalize", d / "imported.h5ad", *steps, "-o", d / "n.h5ad") == 0
    chunks = [d / f"c{i}.h5ad" for i in range(3)]
    assert run("split", d / "n.h5ad", "-o", *chunks) == 0
    assert [ad.read_h5ad(c).n_vars for c in chunks] == [20, 20, 20]
    for chunk in chunks:
        assert run("fit", chunk, "--formula", FORMULA, "-o", chunk.with_suffix(".fit.h5ad")) == 0
    fits = [c.with_suffix(".fit.h5ad") for c in chunks]
    assert run("merge", "--data", d / "n.h5ad", *fits, "-o", d / "fitted.h5ad") == 0
    assert run("correct", d / "fitted.h5ad", "--remove", "batch", "-o", d / "corr.h5ad") == 0
    outputs = {
        "--h5ad": d / "final.h5ad",
        "--corrected-tsv": d / "corrected.tsv",
        "--fit-tsv": d / "fit.tsv",
        "--varpart-tsv": d / "vp.tsv",
    }
    assert run("export", d / "corr.h5ad", *[x for kv in outputs.items() for x in kv]) == 0

    final = ad.read_h5ad(d / "final.h5ad")
    np.testing.assert_array_equal(final.layers["corrected"], reference.layers["corrected"])
    np.testing.assert_array_equal(final.X, reference.X)
    for key in ("lmm_beta", "lmm_se", "lmm_variance", "lmm_theta", "lmm_varpart"):
        pd.testing.assert_frame_equal(final.varm[key], reference.varm[key])
    for column in ("lmm_criterion", "lmm_converged", "lmm_n_obs"):
        np.testing.assert_array_equal(final.var[column], reference.var[column])
    assert final.uns["lmm"]["formula"] == FORMULA
    assert final.uns["lmm"]["n_converged"] == reference.uns["lmm"]["n_converged"]
    assert final.uns["lmm"]["nested_in"] == reference.uns["lmm"]["nested_in"]

    # provenance: every step, with its parameters and the package version
    run_info = final.uns["omixed_run"]
    assert set(run_info) == {"import", "normalize", "fit", "merge", "correct", "export"}
    assert json.loads(run_info["fit"]["params"])["formula"] == FORMULA
    assert json.loads(run_info["correct"]["params"])["remove"] == ["batch"]
    assert run_info["merge"]["omixed_version"] == omixed.__version__

    def read_tsv(path: Path) -> pd.DataFrame:
        # plain tables: the header comes first, nothing to skip
        return pd.read_csv(path, sep="\t", index_col=0, float_precision="round_trip")

    for name in ("corrected.tsv", "fit.tsv", "vp.tsv"):
        assert (d / name).read_text().startswith("feature\t")
        provenance = json.loads((d / f"{name}.json").read_text())
        assert provenance["omixed_version"] == omixed.__version__
        assert provenance["steps"]["fit"]["params"]["formula"] == FORMULA
        assert provenance["steps"]["export"]["command"].startswith("omixed export ")
    corrected = read_tsv(d / "corrected.tsv")
    # the input's feature annotations come first, then one column per sample
    annotations = list(reference.var.columns[~reference.var.columns.str.startswith("lmm_")])
    assert annotations == ["true_effect", "sd_batch", "sd_donor", "sd_resid"]
    assert list(corrected.columns) == annotations + list(reference.obs_names)
    pd.testing.assert_frame_equal(
        corrected[annotations], reference.var[annotations].rename_axis("feature")
    )
    np.testing.assert_array_equal(corrected[reference.obs_names].T, reference.layers["corrected"])
    fit = read_tsv(d / "fit.tsv")
    variance = reference.varm["lmm_variance"]
    np.testing.assert_array_equal(fit["var_batch"], variance["batch"])
    assert list(fit.index) == list(reference.var_names)
    varpart = read_tsv(d / "vp.tsv")
    np.testing.assert_array_equal(varpart, reference.varm["lmm_varpart"])

    # one unchunked fit gives the same fit as split + fit + merge
    assert run("fit", d / "n.h5ad", "--formula", FORMULA, "-o", d / "whole.h5ad") == 0
    whole = ad.read_h5ad(d / "whole.h5ad")
    fitted = ad.read_h5ad(d / "fitted.h5ad")
    for key in whole.varm:
        pd.testing.assert_frame_equal(whole.varm[key], fitted.varm[key])
    assert not [name for name in files_in(d) if name.endswith(".tmp")]


def test_merge_restores_feature_order(tmp_path: Path, small_h5ad: Path) -> None:
    chunks = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    assert run("split", small_h5ad, "-o", *chunks) == 0
    fits = [c.with_suffix(".fit.h5ad") for c in chunks]
    for chunk, fitted in zip(chunks, fits, strict=True):
        assert run("fit", chunk, "--formula", FORMULA, "-o", fitted) == 0
    # chunks given in reverse order still land on the data's own feature order
    assert run("merge", "--data", small_h5ad, *fits[::-1], "-o", tmp_path / "m.h5ad") == 0
    merged = ad.read_h5ad(tmp_path / "m.h5ad")
    second = ad.read_h5ad(chunks[1])
    assert list(merged.var_names) == list(ad.read_h5ad(small_h5ad).var_names)
    direct = omixed.tl.fit(second, FORMULA, progress=False, copy=True)
    beta = merged.varm["lmm_beta"].loc[second.var_names]
    pd.testing.assert_frame_equal(beta, direct.varm["lmm_beta"])


def test_merge_refuses_incomplete_chunks(
    tmp_path: Path, small_h5ad: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chunks = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    assert run("split", small_h5ad, "-o", *chunks) == 0
    assert run("fit", chunks[0], "--formula", FORMULA, "-o", tmp_path / "a.fit.h5ad") == 0
    assert (
        run("merge", "--data", small_h5ad, tmp_path / "a.fit.h5ad", "-o", tmp_path / "m.h5ad") == 1
    )
    assert "do not cover the features" in caplog.text
    assert "missing 'F0030'" in caplog.text
    assert not (tmp_path / "m.h5ad").exists()


def test_import_table_with_sample_sheet(tmp_path: Path, small: ad.AnnData) -> None:
    table = pd.DataFrame(small.X.T, index=small.var_names, columns=small.obs_names)
    table.rename_axis("feature").to_csv(tmp_path / "matrix.tsv", sep="\t")
    small.obs.rename_axis("sample").to_csv(tmp_path / "samples.tsv", sep="\t")
    options = json.dumps({"zero_as_missing": False})
    argv = ["import", "table", tmp_path / "matrix.tsv", "--samples", tmp_path / "samples.tsv"]
    assert run(*argv, "--options", options, "-o", tmp_path / "out.h5ad") == 0
    adata = ad.read_h5ad(tmp_path / "out.h5ad")
    # the reader's number parsing may differ from Python's in the last bit
    np.testing.assert_allclose(adata.X, small.X, rtol=1e-15)
    pd.testing.assert_frame_equal(adata.obs, small.obs, check_categorical=False)
    assert json.loads(adata.uns["omixed_run"]["import"]["params"])["options"] == {
        "zero_as_missing": False
    }


def test_import_example_sheet_replaces_design(tmp_path: Path) -> None:
    sheet = omixed.datasets.example().obs.rename_axis("sample")
    sheet["batch"] = np.where(sheet.index.str[-1].astype(int) % 2 == 0, "even", "odd")
    sheet[["batch"]].to_csv(tmp_path / "samples.tsv", sep="\t")
    argv = ["import", "example", "--samples", tmp_path / "samples.tsv"]
    assert run(*argv, "-o", tmp_path / "x.h5ad") == 0
    obs = ad.read_h5ad(tmp_path / "x.h5ad").obs
    assert list(obs["batch"]) == list(sheet["batch"])
    assert list(obs["condition"]) == list(sheet["condition"])


def test_sample_sheet_mismatch_says_where_how_is_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sheet = omixed.datasets.example().obs.rename_axis("sample").iloc[:-1]
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t")
    argv = ["import", "example", "--samples", tmp_path / "samples.tsv", "-o", tmp_path / "x.h5ad"]
    assert run(*argv) == 1
    assert "missing from" in caplog.text and "'S47'" in caplog.text
    assert "(how: --how on the command line, samples.how in the workflow config)" in caplog.text
    assert run(*argv, "--how", "inner") == 0
    assert ad.read_h5ad(tmp_path / "x.h5ad").n_obs == 47


def test_reader_hints_say_where_the_option_is_set() -> None:
    from omixed._cli._commands import _where_to_set

    options = {"annotation_cols": ("--options", "input.options.annotation_cols")}
    hint = "t.tsv: column 'gene' is not numeric; pass annotation_cols=['gene']"
    assert str(_where_to_set(ValueError(hint), options)) == (
        f"{hint} (annotation_cols: --options on the command line, "
        "input.options.annotation_cols in the workflow config)"
    )
    plain = ValueError("t.tsv: no such file")  # names no option: unchanged
    assert _where_to_set(plain, options) is plain


def test_plot_writes_pngs(tmp_path: Path, reference: ad.AnnData) -> None:
    reference.write_h5ad(tmp_path / "corrected.h5ad")
    out = [tmp_path / "vp.png", tmp_path / "pca.png"]
    assert run("plot", tmp_path / "corrected.h5ad", "--varpart", out[0], "--pca", out[1]) == 0
    for path in out:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "{d}/missing.h5ad", "--formula", FORMULA], "no such file: {d}/missing.h5ad"),
        (["fit", "{data}", "--formula", "~ condition + (1|plate)"], "grouping factor 'plate'"),
        (
            ["fit", "{data}", "--formula", "~ treatment + (1|batch)"],
            "['treatment'] of the fixed effects not found",
        ),
        (["normalize", "{data}", "--steps", "median_centre"], "unknown normalization step"),
        (["correct", "{data}"], "no fit stored under uns['lmm']"),
        (["import", "table", "{data}", "--options", '{{"colour": 1}}'], "colour"),
        (["import", "table", "{d}/missing.tsv"], "no such file"),
        (["split", "{data}", "-o", *[f"{{d}}/{i}.h5ad" for i in range(61)]], "60 features into 61"),
    ],
)
def test_errors_exit_1_without_output(
    argv: list[str],
    message: str,
    tmp_path: Path,
    small_h5ad: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fill = {"d": tmp_path, "data": small_h5ad}
    out = tmp_path / "out.h5ad"
    before = files_in(tmp_path)
    argv = [a.format(**fill) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(out)]
    assert main(argv) == 1
    assert message.format(**fill) in caplog.text
    assert files_in(tmp_path) == before  # no output, no temporary file left behind


def test_console_script_exit_status(tmp_path: Path) -> None:
    """The installed ``omixed`` entry point: message on stderr, status 1, no output."""
    out = tmp_path / "fitted.h5ad"
    proc = subprocess.run(
        ["omixed", "fit", str(tmp_path / "nope.h5ad"), "--formula", FORMULA, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert f"fit: no such file: {tmp_path / 'nope.h5ad'}" in proc.stderr
    assert proc.stdout == ""
    assert not out.exists()


def test_help_loads_no_heavy_package() -> None:
    """``omixed --help`` builds the parser without numpy, pandas, scipy, anndata or matplotlib:
    the commands load what they use when they run (timings: benchmarks/bench_startup.py)."""
    code = (
        "import sys; from omixed.cli import build_parser; build_parser().format_help(); "
        "print(*(m for m in ('numpy', 'pandas', 'scipy', 'anndata', 'matplotlib') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_h5ad_is_a_clear_error(
    damage: str, tmp_path: Path, small_h5ad: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.h5ad"
    data = small_h5ad.read_bytes()
    bad.write_bytes(b"not an hdf5 file" if damage == "garbage" else data[: len(data) // 2])
    before = files_in(tmp_path)
    out = tmp_path / "fitted.h5ad"
    assert main(["fit", str(bad), "--formula", "~ condition + (1|batch)", "-o", str(out)]) == 1
    assert f"{bad} is not a readable h5ad file" in caplog.text
    assert files_in(tmp_path) == before


def test_transform_corrects_new_samples_with_a_saved_fit(tmp_path: Path, small: ad.AnnData) -> None:
    old = small[small.obs["batch"] != "B3"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        omixed.tl.fit(old, FORMULA, progress=False)
    old.write_h5ad(tmp_path / "reference.h5ad")
    new = small[small.obs["batch"] == "B3"].copy()
    new.write_h5ad(tmp_path / "new.h5ad")
    argv = ["transform", tmp_path / "new.h5ad", "--reference", tmp_path / "reference.h5ad"]
    assert run(*argv, "-o", tmp_path / "out.h5ad") == 0
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    expected = omixed.tl.transform(new, old, remove=["batch"], copy=True)
    np.testing.assert_array_equal(out.layers["corrected"], expected.layers["corrected"])
    np.testing.assert_array_equal(out.var["lmm_criterion"], old.var["lmm_criterion"])
    assert "transform" in out.uns["omixed_run"]
