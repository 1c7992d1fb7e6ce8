"""Faults, for real: heatmap jobs killed with SIGKILL while they write, a whole run killed like a
lost node, resumption, bit-for-bit determinism of two runs with one seed on CPU, and a sharded run
equal to the unsharded one."""
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
import yaml
from workflow_helpers import array_digest, copy_workflow, snakemake

pytestmark = pytest.mark.workflow
HEATMAPS = "results/tiny/tiny_cnn/heatmaps"
# Through every heatmap and metric job, the joins and the summary; the figures add nothing here.
TARGETS = ["results/tables/metric_summary.csv", f"{HEATMAPS}/none~0.h5", f"{HEATMAPS}/gaussian~0.3.h5"]
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
ARGS = [*TARGETS, "--cores", "1", "--configfile", "fault.yaml"]  # one core in both runs: same thread counts


def _workdir(path, **changes):
    copy_workflow(path)
    (path / "fault.yaml").write_text(yaml.safe_dump({**FAULT, **changes}))
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
            for tmp in glob.glob(str(work / HEATMAPS / "*" / ".*.h5.tmp-*")):
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
    assert set(todo) <= {"heatmaps", "join_heatmaps", "metrics", "join_metrics", "aggregate_metrics"}, todo
    assert 1 <= todo["heatmaps"] <= 2
    snakemake(work, *ARGS)
    for path, mtime in done_before.items():
        assert os.stat(work / path).st_mtime_ns == mtime, f"{path} was rewritten"
    assert not glob.glob(str(work / HEATMAPS / "*" / ".*.tmp-*")), "stale temporary files left"
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(work, *ARGS, "-n"))

    # 4. Every output equals the uninterrupted run's, byte for byte (train.json: but its wall time).
    made = outputs(work)
    assert made == outputs(reference) and len(made) >= 8
    for path in made:
        assert file_digest(work / path) == file_digest(reference / path), path


def test_a_second_run_sharded_on_two_cores_has_identical_array_data(reference, tmp_path):
    """Determinism and sharding at once: a second run of the seeded config, in another folder, on
    two cores instead of one, with shards of 32 images (32 + 32 + 26 of 90: every heatmap and metric
    job runs per shard), gives the array data of the one-shard run: the dataset, the model's bytes,
    the joined heatmap files (virtual datasets over the shards) and every metric table."""
    work = _workdir(tmp_path, shards={"size": 32})
    snakemake(work, *TARGETS, "--cores", "2", "--configfile", "fault.yaml")
    for level in ("none~0", "gaussian~0.3"):
        shards = sorted(p.name for p in (work / HEATMAPS / level).iterdir())
        assert shards == ["shard-0000.h5", "shard-0001.h5", "shard-0002.h5"]
        assert [p.name for p in (reference / HEATMAPS / level).iterdir()] == ["shard-0000.h5"]
        with h5py.File(work / HEATMAPS / f"{level}.h5") as f:
            assert f["raw/gradcam"].is_virtual and f["raw/gradcam"].shape[0] == 90
            assert [s.file_name for s in f["raw/gradcam"].virtual_sources()] == [
                f"{level}/{name}" for name in shards]
    model = "results/tiny/tiny_cnn/model.pt"
    assert file_digest(work / model) == file_digest(reference / model)
    compared = ["results/tiny/dataset.h5", *TARGETS,
                *[f"results/metrics/tiny/tiny_cnn/{level}.parquet" for level in ("none~0", "gaussian~0.3")]]
    for path in compared:
        assert array_digest(work / path) == array_digest(reference / path), path
