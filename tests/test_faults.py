"""Faults, for real: heatmap jobs killed with SIGKILL while they write, a whole run killed like a
lost node, resumption, and bit-for-bit determinism of two runs with one seed on CPU."""
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pandas as pd
import pytest
import yaml

from workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.workflow
TARGET = "results/metrics.parquet"  # through every heatmap and metric job; the figures add nothing here
HEATMAPS = "results/tiny/tiny_cnn/heatmaps"
FAULT = {
    "seed": 2,
    "device": "cpu",
    # 90 test images in batches of 2: each heatmap job writes for about half a second
    "datasets": {"tiny": {"standin": {"kind": "shapes", "counts": {"train": 16, "test": 30},
                                      "classes": ["disk", "cross", "square"], "image_size": 32, "clutter": 3}}},
    "models": {"tiny_cnn": {"dataset": "tiny", "params": {"widths": [4, 8, 8, 8]}, "target_layer": "features.block4",
                            "train": {"epochs": 1, "batch_size": 16}}},
    "cam": {"methods": {"gradcam": {}, "scorecam": {}, "ablationcam": {}}, "batch_size": 2},
    "perturbations": {"gaussian": [0.3]},
    "metrics": {"compute": {"deletion_auc": {"steps": 4}, "pointing_game": {"tolerance_px": 2}, "consistency": {},
                            "sparseness": {}}},
    "stats": {"bootstrap": 100},
}
ARGS = [TARGET, "--cores", "1", "--configfile", "fault.yaml"]  # one core in both runs: same thread counts


def _workdir(path):
    copy_workflow(path)
    (path / "fault.yaml").write_text(yaml.safe_dump(FAULT))
    return path


def outputs(work):
    """Every data file the run made (logs and benchmarks excluded: they hold times)."""
    return sorted(p.relative_to(work).as_posix() for ext in ("h5", "parquet", "pt", "csv", "json")
                  for p in (work / "results").rglob(f"*.{ext}")
                  if "logs" not in p.parts and "benchmarks" not in p.parts)


def file_digest(path):
    """sha256 of the bytes; a training record without its wall times (the only fields that may differ)."""
    if path.name == "train.json":
        record = json.loads(path.read_text())
        assert record.pop("train_seconds") > 0
        assert all(epoch.pop("seconds") > 0 for epoch in record["history"])
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    work = _workdir(tmp_path_factory.mktemp("uninterrupted"))
    snakemake(work, *ARGS)
    return work


def kill_while_writing(work, *, whole_run: bool, min_bytes: int = 30_000, timeout: float = 600):
    """Start the run and SIGKILL the first heatmap job once its temporary file holds ``min_bytes``
    (datasets created, batches written); with ``whole_run`` Snakemake dies with it, as on a lost node.
    Returns the killed job's temporary file."""
    run = subprocess.Popen([sys.executable, "-m", "snakemake", *ARGS], cwd=work, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and run.poll() is None:
            for tmp in glob.glob(str(work / HEATMAPS / ".*.h5.tmp-*")):
                try:
                    if os.path.getsize(tmp) >= min_bytes:
                        os.kill(int(tmp.rsplit("-", 1)[1]), signal.SIGKILL)  # the job's pid names its file
                        if whole_run:
                            os.killpg(run.pid, signal.SIGKILL)
                        run.wait(timeout=120)
                        return tmp, run.returncode
                except (FileNotFoundError, ProcessLookupError):
                    pass  # the job finished this instant; wait for the next one
            time.sleep(0.002)
        raise AssertionError(f"no heatmap job was caught writing (run exit code {run.poll()})")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def jobs_to_run(work):
    """Rule -> count from Snakemake's dry-run job table."""
    out = snakemake(work, *ARGS, "-n", "--quiet", "rules").stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


def test_killed_jobs_leave_nothing_and_the_rerun_is_bitwise_equal(reference, tmp_path):
    work = _workdir(tmp_path)

    # 1. The heatmap job alone is killed: Snakemake sees it fail, keeps no output, and stops.
    tmp, code = kill_while_writing(work, whole_run=False)
    final = tmp.replace("/.", "/").rsplit(".tmp-", 1)[0]
    assert code != 0 and not os.path.exists(final)
    assert os.path.exists(tmp)  # a SIGKILL gives no chance to clean up; the rerun removes it
    done_before = {p: os.stat(work / p).st_mtime_ns for p in outputs(work)}
    assert {"results/tiny/dataset.h5", "results/tiny/tiny_cnn/model.pt"} <= set(done_before)

    # 2. The rerun is killed with its job, Snakemake included (a lost node): the lock stays behind.
    tmp2, _ = kill_while_writing(work, whole_run=True)
    assert not os.path.exists(tmp2.replace("/.", "/").rsplit(".tmp-", 1)[0])
    locked = snakemake(work, *ARGS, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr

    # 3. Resume: after --unlock, only what is missing runs; finished files are not touched.
    snakemake(work, *ARGS, "--unlock")
    todo = jobs_to_run(work)
    assert set(todo) <= {"heatmaps", "metrics", "aggregate_metrics"}, todo
    assert 1 <= todo["heatmaps"] <= 2
    snakemake(work, *ARGS)
    for path, mtime in done_before.items():
        assert os.stat(work / path).st_mtime_ns == mtime, f"{path} was rewritten"
    assert not glob.glob(str(work / HEATMAPS / ".*.tmp-*")), "stale temporary files left"
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(work, *ARGS, "-n"))

    # 4. Every output equals the uninterrupted run's, byte for byte (train.json: but its wall time).
    made = outputs(work)
    assert made == outputs(reference) and len(made) >= 8
    for path in made:
        assert file_digest(work / path) == file_digest(reference / path), path


def test_two_runs_with_one_seed_give_identical_array_data(reference, tmp_path):
    """Determinism on CPU: the array data (every HDF5 dataset, every parquet column) of a second
    run, in another folder and on two cores instead of one, hashes the same."""
    work = _workdir(tmp_path)
    snakemake(work, TARGET, "--cores", "2", "--configfile", "fault.yaml")
    data = [p for p in outputs(work) if p.endswith((".h5", ".parquet"))]
    assert len(data) >= 6 and data == [p for p in outputs(reference) if p.endswith((".h5", ".parquet"))]
    for path in data:
        assert array_digest(work / path) == array_digest(reference / path), path
