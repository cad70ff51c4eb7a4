"""Out-of-core fits: a backed h5ad is read chunk by chunk with the same results."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest

import omixed

FORMULA = "~ condition + (1|batch) + (1|donor)"


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    adata = omixed.datasets.example()[:, :400].copy()
    path = tmp_path_factory.mktemp("backed") / "example.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_backed_fit_equals_in_memory_fit(on_disk):
    adata, path = on_disk
    backed = ad.read_h5ad(path, backed="r")
    assert isinstance(backed.X, h5py.Dataset)
    omixed.tl.fit(backed, FORMULA, chunk_size=64, progress=False)
    memory = omixed.tl.fit(adata, FORMULA, progress=False, copy=True)
    np.testing.assert_array_equal(backed.var["lmm_criterion"], memory.var["lmm_criterion"])
    np.testing.assert_array_equal(backed.varm["lmm_beta"], memory.varm["lmm_beta"])
    backed.file.close()


def test_bad_values_on_disk_stop_the_run_before_fitting(on_disk, tmp_path):
    adata, _ = on_disk
    bad = adata.copy()
    bad.X[5, 350] = np.inf  # in a late chunk
    path = tmp_path / "bad.h5ad"
    bad.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match=r"in features 320\.\.383.*1 infinite value"):
        omixed.tl.fit(backed, FORMULA, chunk_size=64, progress=False)
    assert "lmm_criterion" not in backed.var
    backed.file.close()
