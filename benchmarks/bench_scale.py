"""Out-of-core scale: fit features chunk by chunk from an h5ad opened with ``backed="r"``.

For each size (default 10 000, 100 000 and 1 000 000 features × 100 samples, a methylation- or
peptide-scale input, ``~ condition + (1|batch)``), the script writes a dense h5ad chunk by chunk
(the matrix is never in memory), then fits it in a fresh process with ``omixed.tl.fit`` on the
backed AnnData and prints the fit time, features per second and the process's peak RSS.  The cost
should grow linearly and the peak memory stay far below the matrix size.

Usage: ``python benchmarks/bench_scale.py [--sizes 10000 100000 1000000] [--dir /tmp]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from _peers import PEAK_MIB

N_SAMPLES, N_BATCH, BLOCK = 100, 5, 50_000


def write_h5ad(path: Path, n_features: int, seed: int = 0) -> None:
    """A dense samples × features h5ad, written one block of features at a time."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"B{i % N_BATCH}" for i in range(N_SAMPLES)]),
            "condition": pd.Categorical(np.where(np.arange(N_SAMPLES) % 2, "a", "b")),
        },
        index=[f"S{i:03d}" for i in range(N_SAMPLES)],
    )
    var = pd.DataFrame(index=[f"F{i:07d}" for i in range(n_features)])
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    batch = obs["batch"].cat.codes.to_numpy()
    with h5py.File(path, "a") as f:
        X = f.create_dataset(
            "X", shape=(N_SAMPLES, n_features), dtype="f8", chunks=(N_SAMPLES, 1024)
        )
        X.attrs["encoding-type"] = "array"
        X.attrs["encoding-version"] = "0.2.0"
        for a in range(0, n_features, BLOCK):
            b = min(a + BLOCK, n_features)
            shift = rng.normal(0, 0.5, (N_BATCH, b - a))[batch]
            X[:, a:b] = 10 + shift + rng.normal(0, 0.3, (N_SAMPLES, b - a))


def fit_in_subprocess(path: Path) -> dict:
    code = f"""
import json, time, warnings
import anndata as ad, omixed
warnings.simplefilter("ignore")
adata = ad.read_h5ad({str(path)!r}, backed="r")
t = time.perf_counter()
omixed.tl.fit(adata, "~ condition + (1|batch)", progress=False)
seconds = time.perf_counter() - t
{PEAK_MIB}
print(json.dumps({{"seconds": seconds, "converged": int(adata.var["lmm_converged"].sum()),
                  "peak_rss_mib": peak}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dir", default=None, help="where to write the h5ad files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        header = ("features", "matrix MiB", "fit s", "features/s", "peak RSS MiB")
        print("{:>10} {:>10} {:>8} {:>11} {:>12}".format(*header))
        for n in args.sizes:
            path = Path(tmp) / f"scale_{n}.h5ad"
            write_h5ad(path, n)
            r = fit_in_subprocess(path)
            size = N_SAMPLES * n * 8 / 2**20
            rate = n / r["seconds"]
            seconds, rss = r["seconds"], r["peak_rss_mib"]
            print(f"{n:>10} {size:>10.0f} {seconds:>8.1f} {rate:>11.0f} {rss:>12.0f}")
            assert r["converged"] == n, r
            path.unlink()


if __name__ == "__main__":
    main()
