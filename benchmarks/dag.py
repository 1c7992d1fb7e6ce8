"""How long Snakemake takes to build the DAG of config/paper.yaml, at its full scale and beyond.

The shard count is known once the dataset is prepared (rule prepare_dataset is a checkpoint), so
the full DAG exists only from then on. This script copies the workflow into a scratch folder,
puts a stand-in for the prepared dataset there (an HDF5 file with the split column of 50,000 test
and 2,000 train images, newer than its inputs, so Snakemake treats the checkpoint as done), and
times `snakemake -n` (dry run: DAG building, no job) for several shard sizes: the jobs grow as
models x (1 + kinds x levels) x shards x 2 (heatmaps and metrics).

Prints, per shard size: the jobs in the DAG and the wall time of the dry run, and the dry run of
a fresh folder (before the checkpoint). Usage: python benchmarks/dag.py [--sizes 5000 1000 500 100]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from workflow_helpers import copy_workflow  # noqa: E402


def dry_run(work: Path, config: str) -> tuple[int, float]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--configfile", config],
                         cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", run.stdout + run.stderr, flags=re.M)
    return int(total.group(1)) if total else 0, seconds


def prepared_stub(work: Path, dataset: str, n_test: int, n_train: int) -> None:
    """What the checkpoint leaves behind, as far as the DAG needs it: the stand-in folder and a
    dataset file with its split column (images are not needed to plan)."""
    (work / "resources" / dataset / "data").mkdir(parents=True, exist_ok=True)
    path = work / "results" / dataset / "dataset.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    time.sleep(0.01)
    with h5py.File(path, "w") as f:
        f.create_dataset("split", data=np.array(["test"] * n_test + ["train"] * n_train, dtype=object),
                         dtype=h5py.string_dtype())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 1000, 500, 100])
    args = parser.parse_args()
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    dataset = next(iter(paper["datasets"]))
    n_test = sum(paper["datasets"][dataset]["standin"]["counts"]["test"] for _ in
                 paper["datasets"][dataset]["standin"]["classes"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copy_workflow(work)
        jobs, seconds = dry_run(work, "config/paper.yaml")
        print(f"fresh folder (up to the checkpoint): {jobs} jobs, {seconds:.1f} s")
        prepared_stub(work, dataset, n_test, 2000)
        print(f"{'shard size':>10} {'shards':>7} {'jobs':>7} {'dry run s':>10}")
        for size in args.sizes:
            config = dict(paper, shards={"size": size})
            (work / "bench.yaml").write_text(yaml.safe_dump(config))
            jobs, seconds = dry_run(work, "bench.yaml")
            print(f"{size:>10} {-(-n_test // size):>7} {jobs:>7} {seconds:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
