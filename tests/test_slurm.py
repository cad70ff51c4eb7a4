"""The workflow on a real SLURM cluster, through ``profiles/slurm``.

It runs where a cluster answers ``sinfo`` (a login node: the jobs go to its default partition),
or on a throwaway one-node cluster on this machine (tests/hpc) when ``OMIXED_SLURM_TEST_CLUSTER=1``
asks for one, as ``.ci/run`` does: that needs root, installs SLURM with apt-get if it is missing
and starts its daemons (stopped again afterwards), so it never happens unasked.  Elsewhere the
tests are skipped.

Three Snakemake runs overlap.  The reference run on this machine starts first, so that it
overlaps the cluster's start (and, on a fresh machine, the installation of SLURM), and gets only
the CPU time the SLURM jobs leave over.  Then the example workflow runs on SLURM, and beside its
first job a workflow with an extra rule that fails at run time.  The plots are left out: they
would lengthen the last SLURM job past a status check of the plugin.  SLURM forgets finished
jobs after ``MinJobAge`` seconds (and with the cluster), so their states are read with
``scontrol`` before the cluster stops.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import finish, make_project, start
from hpc.slurm import slurm_cluster

pytestmark = pytest.mark.slurm

# Set to 1 to run on a throwaway one-node cluster (root; installs and starts SLURM).
THROWAWAY_CLUSTER = "OMIXED_SLURM_TEST_CLUSTER"
NO_CLUSTER = (
    "no SLURM cluster answers `sinfo` here. On a cluster's login node these tests run the "
    "workflow through profiles/slurm; to run them on a throwaway one-node cluster on this "
    f"machine instead (needs root; installs SLURM with apt-get and starts its daemons), set "
    f"{THROWAWAY_CLUSTER}=1 as .ci/run does"
)

CHUNKS = 2  # one fit job per CPU of the test cluster
# Everything but the plots, which would add a step to the last SLURM job.
TARGET = "results/corrected.h5ad"
TIMEOUT = 180  # seconds for one SLURM run; `timeout` then sends SIGTERM, 10 s later SIGKILL
# A hung Snakemake ignores SIGTERM while it waits for its jobs, hence `-k`.
SLURM_RUN = ("timeout", "-k", "10", str(TIMEOUT))
SLURM_ARGS = (
    "--profile",
    "profiles/slurm",
    # The plugin checks a job 3, 16, 39, 72 s after its submission (N, 2N+10, 3N+30, ... for
    # N given here; 5 in the profile): on 2 cores a fit job takes about 13 s, the two group
    # jobs about 30 s (mostly Python imports of two Snakemake processes per step).
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--config",
    f"chunks={CHUNKS}",
)
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")
# The extra Snakefile: the whole workflow plus one rule that always fails in its SLURM job.
FAILING_SNAKEFILE = """\
include: "workflow/Snakefile"


rule fail_on_purpose:
    output:
        "results/never.txt",
    log:
        "logs/fail_on_purpose.log",
    shell:
        "echo failing on purpose > {log}; exit 3"
"""
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/(\w+)/")


def cluster_answers() -> bool:
    """Whether a SLURM cluster answers ``sinfo`` on this machine."""
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def in_background(proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """Let ``proc`` run on the CPU time that the SLURM jobs leave over.

    ``proc`` leads its own session, and where the kernel schedules sessions as groups
    (autogroup, on by default on many distributions) a process's nice value counts only
    within its session; the session's own nice value is set here instead.
    """
    with contextlib.suppress(OSError):  # no autogroup: nothing to do
        Path(f"/proc/{proc.pid}/autogroup").write_text("19")
    return proc


def daemons() -> set[str]:
    """``pid name`` of every running SLURM or munge daemon (and job step) on this machine."""
    found = set()
    for name in DAEMONS:  # one at a time: pgrep rejects patterns longer than 15 characters
        pgrep = subprocess.run(["pgrep", "-a", "-x", name], capture_output=True, text=True)
        found.update(pgrep.stdout.splitlines())
    return found


def slurm_jobs(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """SLURM's own record of every job it still remembers: id -> its ``scontrol`` fields."""
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def submitted(log: str) -> dict[str, str]:
    """SLURM job id -> rule or group, from the plugin's submission lines."""
    return {m[1]: m[2] for m in SUBMITTED.finditer(log)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The three runs, SLURM's job table, and the daemons running before and after."""
    throwaway = os.environ.get(THROWAWAY_CLUSTER) == "1"
    if not throwaway:
        if not cluster_answers():
            pytest.skip(NO_CLUSTER)
        pytest.importorskip(
            "snakemake_executor_plugin_slurm", reason='no SLURM executor: pip install -e ".[hpc]"'
        )
    on_slurm = make_project(tmp_path_factory.mktemp("slurm"))
    local = make_project(tmp_path_factory.mktemp("local"))
    failing = make_project(tmp_path_factory.mktemp("failing"))
    (failing / "failing.smk").write_text(FAILING_SNAKEFILE)

    before = daemons()
    begin = time.monotonic()
    procs = {"local": in_background(start(local, TARGET, "--config", f"chunks={CHUNKS}"))}
    try:
        with slurm_cluster() if throwaway else contextlib.nullcontext(dict(os.environ)) as env:
            procs["slurm"] = start(on_slurm, TARGET, *SLURM_ARGS, env=env, prefix=SLURM_RUN)
            # Not in the background: its job must be over (it takes one of the cluster's two
            # CPUs) before the two fit jobs are submitted.
            procs["failing"] = start(
                failing,
                "results/never.txt",
                "--snakefile",
                "failing.smk",
                *SLURM_ARGS,
                env=env,
                prefix=SLURM_RUN,
            )
            # our own deadline comes after `timeout`'s, which ends a hung run more gently
            results = {name: finish(proc, TIMEOUT + 30) for name, proc in procs.items()}
            jobs = slurm_jobs(env)
    finally:  # a failure above leaves runs behind
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        **results,
        "seconds": time.monotonic() - begin,
        "jobs": jobs,
        "projects": {"slurm": on_slurm, "local": local},
        "before": before,
        "after": daemons(),
    }


def test_workflow_runs_through_sbatch(runs: dict) -> None:
    result = runs["slurm"]
    assert result.returncode == 0, result.stdout
    ids = submitted(result.stdout)
    # one job before the scatter, one per chunk, one after the gather (profile groups)
    assert sorted(ids.values()) == [
        "group_finish_correct_export_merge",
        "group_prepare_import_data_normalize_split",
        "rule_fit",
        "rule_fit",
    ]
    jobs = runs["jobs"]
    fits = [job_id for job_id, name in ids.items() if name == "rule_fit"]
    # SLURM ran those very jobs, one per chunk, to completion
    assert sorted(jobs[i]["Comment"] for i in fits) == [
        f"rule_fit_wildcards_{c}-of-{CHUNKS}" for c in range(1, CHUNKS + 1)
    ]
    assert all(jobs[i]["JobState"] == "COMPLETED" for i in ids), {i: jobs[i] for i in ids}
    print(f"\nall three runs: {runs['seconds']:.0f} s; SLURM jobs (submit, start, end):")
    for i in ids:
        print(i, *(jobs[i][key] for key in ("Comment", "SubmitTime", "StartTime", "EndTime")))


def test_slurm_result_equals_local_run(runs: dict) -> None:
    for name in ("slurm", "local"):
        assert runs[name].returncode == 0, runs[name].stdout
    on_slurm, local = (
        ad.read_h5ad(runs["projects"][name] / "results/corrected.h5ad")
        for name in ("slurm", "local")
    )
    np.testing.assert_array_equal(on_slurm.X, local.X)
    assert set(on_slurm.layers) == set(local.layers)
    assert "corrected" in local.layers
    for key in local.layers:
        np.testing.assert_array_equal(on_slurm.layers[key], local.layers[key])
    pd.testing.assert_frame_equal(on_slurm.var, local.var, check_exact=True)
    assert set(on_slurm.varm) == set(local.varm)
    assert len(local.varm) >= 6
    for key in local.varm:
        pd.testing.assert_frame_equal(on_slurm.varm[key], local.varm[key], check_exact=True)


def test_failing_job_fails_the_run_with_slurm_state(runs: dict) -> None:
    result = runs["failing"]
    assert result.returncode == 1, result.stdout  # not 124/137: `timeout` did not end it
    ids = submitted(result.stdout)
    assert list(ids.values()) == ["rule_fail_on_purpose"]
    (job_id,) = ids
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'FAILED'" in result.stdout
    job = runs["jobs"][job_id]
    assert job["Comment"] == "rule_fail_on_purpose"
    # the job's Snakemake exits with 1 when its rule fails
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "1:0")
    assert "Error in rule fail_on_purpose" in result.stdout


def test_cluster_stopped_without_leftovers(runs: dict) -> None:
    # the cluster (and any job step) is gone; a cluster that ran before the test is kept
    assert runs["after"] == runs["before"]
