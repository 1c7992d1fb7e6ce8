"""Shared by the workflow tests: a copy of the workflow in a scratch folder, and Snakemake runs."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
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
    """sha256 over the array data alone: every HDF5 dataset, or every parquet (or CSV) column."""
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
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        for column in table.columns:
            h.update(column.encode())
            values = table[column]
            if len(values) and isinstance(values.iloc[0], (list, np.ndarray)):  # list columns (box outliers)
                values = values.map(lambda v: np.asarray(v, dtype=float).tobytes().hex())
            h.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    return h.hexdigest()


def run_config(work: Path, configfile: str) -> dict:
    """The config a run in ``work`` with ``--configfile configfile`` used (that file alone: it replaces
    config/config.yaml), validated (defaults filled in)."""
    import yaml

    from cambench.config import validate_config
    return validate_config(yaml.safe_load((work / configfile).read_text()), work / "config" / "schema.yaml",
                           workdir=work)


def assert_reduce_equals_whole_table(work: Path, config: dict) -> None:
    """The reduce rules' tables (block by block) equal, as written, the whole-table functions on the run's
    whole metric table read at once: the summary, the box statistics and the four statistics tables."""
    from cambench.aggregate import summary_table
    from cambench.stats import friedman_table, kruskal_table, mixed_model_table, posthoc_table
    table = pd.read_parquet(work / "results" / "metrics")
    stats = config["stats"]
    summary, boxes = summary_table(table, stats["bootstrap"], config["seed"], stats["bootstrap_max_n"])
    expected = {
        "metric_summary": summary, "friedman": friedman_table(table, stats["alpha"]),
        "posthoc": posthoc_table(table, stats["alpha"]), "kruskal": kruskal_table(table, stats["alpha"]),
        "mixed_model": mixed_model_table(table, stats["mixed_model_metrics"], stats["alpha"],
                                         stats["mixed_model_max_images"], config["seed"])}
    for name, frame in expected.items():
        written = (work / "results" / "tables" / f"{name}.csv").read_text()
        assert frame.to_csv(index=False, float_format="%.6g") == written, name
    stored = pd.read_parquet(work / "results" / "metric_distributions.parquet")
    assert [list(f) for f in stored.pop("fliers")] == [list(f) for f in boxes.pop("fliers")]
    pd.testing.assert_frame_equal(stored, boxes, check_dtype=False)
