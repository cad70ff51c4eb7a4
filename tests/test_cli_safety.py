"""The command line never overwrites its inputs and writes all of a command's outputs or none."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import omixed
from omixed import cli

FORMULA = "~ condition + (1|batch)"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small raw h5ad, its fit (corrected), a wide TSV and a peptide h5ad."""
    folder = tmp_path_factory.mktemp("cli_safety")
    raw = omixed.datasets.example()[:, :20].copy()
    raw.write_h5ad(folder / "raw.h5ad")
    fitted = raw.copy()
    omixed.tl.fit(fitted, FORMULA, progress=False)
    omixed.tl.correct(fitted, remove=["batch"], method="blup")
    fitted.write_h5ad(folder / "fitted.h5ad")
    pd.DataFrame(raw.X.T, index=raw.var_names, columns=raw.obs_names).to_csv(
        folder / "data.tsv", sep="\t"
    )
    return {p.stem: p for p in folder.iterdir()}


def _digest(paths) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "table", "{data}", "-o", "{data}"], "is the input"),
        (["normalize", "{raw}", "-o", "{raw}"], "is the input"),
        (["export", "{fitted}", "--h5ad", "{out}", "--fit-tsv", "{out}"], "two outputs"),
        (["fit", "{raw}", "--formula", FORMULA, "--key", "a/b", "-o", "{out}"], "cannot be stored"),
        (["normalize", "{raw}", "-o", "{data}/x.h5ad"], "is a file, not a folder"),
        (["normalize", "{raw}", "-o", "/dev/full"], "not a regular file"),
        (["export", "{fitted}", "--fit-tsv", "{fitted}"], "is the input"),
    ],
)
def test_outputs_that_would_clobber_inputs_are_refused_before_any_work(
    files, tmp_path, caplog, argv, message
):
    before = _digest(files.values())
    names = {**{k: str(v) for k, v in files.items()}, "out": str(tmp_path / "out.h5ad")}
    assert cli.main([a.format(**names) for a in argv]) == 1
    assert message in caplog.text
    assert _digest(files.values()) == before
    assert list(tmp_path.iterdir()) == []
    assert Path("/dev/full").is_char_device()


def test_a_multi_output_command_writes_all_or_nothing(files, tmp_path):
    blocked = tmp_path / "fit.tsv"
    blocked.mkdir()  # a folder where a table should go: the command must write nothing at all
    argv = ["export", str(files["fitted"]), "--h5ad", str(tmp_path / "final.h5ad")]
    argv += ["--corrected-tsv", str(tmp_path / "corrected.tsv"), "--fit-tsv", str(blocked)]
    assert cli.main(argv) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.tsv"]
    blocked.rmdir()
    assert cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrected.tsv",
        "corrected.tsv.json",
        "final.h5ad",
        "fit.tsv",
        "fit.tsv.json",
    ]


def test_proteins_through_the_command_line_equal_one_summary(tmp_path):
    peptides = omixed.datasets.example_peptides()[:, :400].copy()
    omixed.pp.median_center(peptides)
    data = tmp_path / "peptides.h5ad"
    peptides.write_h5ad(data)
    chunks = [tmp_path / f"c{i}.h5ad" for i in range(3)]
    assert cli.main(["split", str(data), "--by", "protein", "-o", *map(str, chunks)]) == 0
    split = [ad.read_h5ad(c) for c in chunks]
    groups = [set(c.var["protein"]) for c in split]
    assert not (groups[0] & groups[1]) and not (groups[1] & groups[2])  # proteins kept whole
    assert sum(c.n_vars for c in split) == peptides.n_vars
    summaries = [c.with_suffix(".proteins.h5ad") for c in chunks]
    for chunk, out in zip(chunks, summaries, strict=True):
        assert cli.main(["summarize", str(chunk), "-o", str(out)]) == 0
    merged = tmp_path / "proteins.h5ad"
    assert cli.main(["merge", *map(str, summaries), "-o", str(merged)]) == 0
    table, volcano = tmp_path / "de.tsv", tmp_path / "volcano.png"
    argv = ["test", str(merged), "--contrast", "condition[T.treated]", "--peptides", str(data)]
    assert cli.main([*argv, "--moderate", "--table", str(table), "--volcano", str(volcano)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        whole = omixed.tl.summarize_proteins(peptides, progress=False)
    result = ad.read_h5ad(merged)[:, whole.var_names]
    np.testing.assert_array_equal(result.X, whole.X)
    np.testing.assert_array_equal(result.layers["corrected"], whole.layers["corrected"])
    top = omixed.tl.test(whole, contrast="condition[T.treated]", peptides=peptides, moderate=True)
    written = pd.read_csv(table, sep="\t", index_col=0)
    assert list(written.columns[:2]) == ["n_peptides", "estimate"]
    np.testing.assert_allclose(
        written["pvalue"].sort_index(), top["pvalue"].sort_index(), rtol=1e-12
    )
    assert volcano.read_bytes()[:4] == b"\x89PNG"


def test_protein_chunks_of_different_samples_are_refused(tmp_path, caplog):
    peptides = omixed.datasets.example_peptides()[:, :120].copy()
    data = tmp_path / "peptides.h5ad"
    peptides.write_h5ad(data)
    chunks = [tmp_path / f"c{i}.h5ad" for i in range(2)]
    assert cli.main(["split", str(data), "--by", "protein", "-o", *map(str, chunks)]) == 0
    second = ad.read_h5ad(chunks[1])
    second[1:].copy().write_h5ad(chunks[1])  # one sample fewer
    summaries = [c.with_suffix(".proteins.h5ad") for c in chunks]
    for chunk, out in zip(chunks, summaries, strict=True):
        assert cli.main(["summarize", str(chunk), "-o", str(out)]) == 0
    merged = tmp_path / "proteins.h5ad"
    assert cli.main(["merge", *map(str, summaries), "-o", str(merged)]) == 1
    assert "the protein chunks have different samples" in caplog.text
    assert not merged.exists()


# A random command line over a pool of paths: inputs, fresh outputs, an input again, a folder,
# a device.  Whatever happens, no input changes, and a failed command leaves no output behind.
COMMANDS = {
    "normalize": (["{input}"], ["-o"], ["--steps", "median_center"]),
    "correct": (["{fitted}"], ["-o"], ["--remove", "batch", "--method", "blup"]),
    "export": (["{fitted}"], ["--h5ad", "--corrected-tsv", "--fit-tsv", "--varpart-tsv"], []),
    "split": (["{input}"], ["-o", "-o"], []),
    "fit": (["{input}"], ["-o"], ["--formula", FORMULA]),
    "import": (["table", "{data}"], ["-o"], []),
}
POOL = ["new1.h5ad", "new2.tsv", "new3.tsv", "{input}", "{fitted}", "{data}", "folder", "/dev/full"]


@settings(
    max_examples=int(os.environ.get("OMIXED_FUZZ_EXAMPLES", 25)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    command=st.sampled_from(sorted(COMMANDS)),
    choices=st.lists(st.sampled_from(POOL), min_size=4, max_size=4),
)
def test_random_command_lines_never_clobber_inputs_or_leave_partial_outputs(
    files, tmp_path_factory, command, choices
):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "folder").mkdir()
    names = {"input": files["raw"], "fitted": files["fitted"], "data": files["data"]}
    for key, path in names.items():  # copies: an output may legitimately replace a non-input
        names[key] = folder / path.name
        names[key].write_bytes(path.read_bytes())
    positional, flags, extra = COMMANDS[command]
    inputs = [Path(a.format(**names)) for a in positional if "{" in a]
    before = _digest(inputs)
    outputs = []
    argv = [command, *(a.format(**names) for a in positional), *extra]
    for flag, choice in zip(flags, choices, strict=False):
        path = choice.format(**names) if "{" in choice else choice
        path = path if os.path.isabs(path) else str(folder / path)
        outputs.append(path)
        argv += [flag, path] if flag != "-o" or "-o" not in argv else [path]
    code = cli.main(argv)
    event(f"{command} exit {code}")
    assert _digest(inputs) == before
    fresh = [p for p in outputs if Path(p).parent == folder and Path(p).name.startswith("new")]
    if code == 0:
        assert all(Path(p).is_file() for p in fresh)
    else:
        assert not any(Path(p).exists() for p in fresh)
    assert not list(folder.glob(".*.tmp"))
