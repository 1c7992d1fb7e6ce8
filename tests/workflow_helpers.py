"""Shared by the workflow tests: a copy of the workflow in a scratch folder, and Snakemake runs."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["Snakefile", "rules", "scripts", "config", "reports", "envs", "profiles"]


def copy_workflow(work: Path) -> None:
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)


def snakemake(workdir, *args, check=True, timeout=1200, env=None):
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                         timeout=timeout, env=env)
    if check and run.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run


def array_digest(path):
    """sha256 over the array data alone: every HDF5 dataset, or every parquet column."""
    h = hashlib.sha256()
    if path.suffix == ".h5":
        with h5py.File(path) as f:
            names = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in sorted(names):
                h.update(name.encode())
                d = f[name]
                if h5py.check_string_dtype(d.dtype):  # variable-length strings: their text, not pointers
                    h.update("\0".join(d.asstr()[()].tolist()).encode())
                else:
                    h.update(d[()].tobytes())
    else:
        table = pd.read_parquet(path)
        for column in table.columns:
            h.update(column.encode())
            h.update(pd.util.hash_pandas_object(table[column], index=False).to_numpy().tobytes())
    return h.hexdigest()
