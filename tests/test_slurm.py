"""profiles/slurm on a real SLURM: a one-node cluster on this machine (tests/slurm_cluster.py) runs
a tiny config through snakemake-executor-plugin-slurm; every job goes through sbatch, and the outputs'
array data equal a local run's. Needs Debian's slurmctld, slurmd, munge and slurm-client, and root:
skipped without them, unless CAMBENCH_REQUIRE_SLURM=1 (CI), then failed; CAMBENCH_INSTALL_SLURM=1
lets the test apt-get them."""
import os
import re
import socket
import subprocess
import sys

import pytest
import yaml
from slurm_cluster import install_slurm, marked_processes, missing_binaries, node_resources, slurm_cluster
from workflow_helpers import ROOT, array_digest, copy_workflow, snakemake

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
# Every job class on the way: data, training, heatmaps, metrics, aggregation.
TARGET = "results/tables/metric_summary.csv"
TINY = {  # tests/test_faults.py's FAULT config, smaller and without perturbations: 6 jobs
    "seed": 2,
    "device": "cpu",
    "datasets": {"tiny": {"standin": {"kind": "shapes", "counts": {"train": 16, "test": 10},
                                      "classes": ["disk", "cross", "square"], "image_size": 32, "clutter": 3}}},
    "models": {"tiny_cnn": {"dataset": "tiny", "params": {"widths": [4, 8, 8, 8]}, "target_layer": "features.block4",
                            "train": {"epochs": 1, "batch_size": 16}}},
    "cam": {"methods": {"gradcam": {}, "scorecam": {}, "ablationcam": {}}, "batch_size": 5},
    "perturbations": {},
    "metrics": {"compute": {"deletion_auc": {"steps": 4}, "pointing_game": {"tolerance_px": 2}, "sparseness": {}}},
    "stats": {"bootstrap": 100},
}
JOBS = ["generate_standin", "prepare_dataset", "train_model", "heatmaps", "metrics", "aggregate_metrics"]
JOB_KEYWORDS = ("script:", "shell:", "run:", "notebook:", "wrapper:")


def profile():
    return yaml.safe_load(PROFILE.read_text())


def local_rules():
    """The rules named in a `localrules:` directive (they run in the Snakemake process, never on SLURM)."""
    names = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", smk.read_text(), flags=re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def job_rules():
    """Rule name -> its text, for every rule of rules/*.smk that runs something as a job (not
    target-only rules, not local rules)."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            if any(re.search(rf"^\s+{k}", body, flags=re.M) for k in JOB_KEYWORDS):
                rules[name] = body
    return {name: body for name, body in rules.items() if name not in local_rules()}


def gpu_rules():
    """The rules that run on the configured device (they ask for `gpu=GPUS_PER_JOB`): the ones the
    profile must give the GPU class."""
    return {name for name, body in job_rules().items() if re.search(r"^\s+gpu=GPUS_PER_JOB,", body, flags=re.M)}


def test_profile_gives_every_rule_a_class_and_forces_no_gpu():
    p = profile()
    rules, gpu = set(job_rules()), gpu_rules()
    assert {"heatmaps", "metrics", "store_perturbed", "search_sycam", "train_model"} <= gpu
    assert {"join_heatmaps", "join_metrics"} <= local_rules() and not local_rules() & set(rules)
    assert set(p["set-resources"]) == rules and set(p["set-threads"]) == rules
    cpu_partition = p["default-resources"]["slurm_partition"]
    gpu_partition = {p["set-resources"][r].get("slurm_partition") for r in gpu}
    assert len(gpu_partition) == 1 and None not in gpu_partition and gpu_partition != {cpu_partition}
    reduce = {"aggregate_metrics", "statistics"}   # a pool of worker processes, one block each
    for rule in rules - gpu:
        assert "slurm_partition" not in p["set-resources"][rule], rule  # the CPU partition, by default
        assert p["set-threads"][rule] == (8 if rule in reduce else 1), rule
    for resources in [p["default-resources"], *p["set-resources"].values()]:
        assert not {"gpu", "gres", "gpu_model", "cpus_per_gpu"} & set(resources)  # rules ask for GPUs themselves
        assert {"runtime", "mem_mb"} <= set(resources) | set(p["default-resources"])
    assert p["executor"] == "slurm" and p["latency-wait"] >= 30


def _require_slurm():
    missing = missing_binaries()
    if missing and os.environ.get("CAMBENCH_INSTALL_SLURM") == "1":
        install_slurm()
        missing = missing_binaries()
    problem = (f"SLURM binaries missing: {', '.join(missing)} (apt-get install slurmctld slurmd munge slurm-client)"
               if missing else None if os.geteuid() == 0 else "the test SLURM cluster's slurmd needs root")
    if problem:
        if os.environ.get("CAMBENCH_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def _workdir(path):
    path.mkdir()
    copy_workflow(path)
    (path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return path


def _data_files(work):
    return sorted(p.relative_to(work).as_posix() for ext in ("h5", "parquet")
                  for p in (work / "results").rglob(f"*.{ext}"))


def _listening(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.workflow
def test_workflow_on_a_real_slurm_cluster_equals_the_local_run(tmp_path):
    _require_slurm()
    # The local reference run goes on beside the SLURM run, which spends most of its time waiting
    # for the next status check. Each rule gets the threads it gets on the cluster (the profile's,
    # at most the node's CPUs): a training on 2 torch threads differs from one on 1 in the last bits.
    local = _workdir(tmp_path / "local")
    cpus = node_resources()[0]
    threads = [f"{rule}={min(n, cpus)}" for rule, n in profile()["set-threads"].items()]
    with open(tmp_path / "local.log", "w") as log:
        local_run = subprocess.Popen([sys.executable, "-m", "snakemake", TARGET, "--cores", str(cpus),
                                      "--configfile", "tiny.yaml", "--set-threads", *threads], cwd=local,
                                     stdout=log, stderr=subprocess.STDOUT)
    try:
        work, run, submitted, jobs, records = _run_on_slurm(tmp_path / "slurm", cpus)
        local_run.wait(timeout=300)
    finally:
        if local_run.poll() is None:
            local_run.kill()
            local_run.wait()
    assert local_run.returncode == 0, (tmp_path / "local.log").read_text()[-4000:]

    # Every job ran as a SLURM job: one submission per job, each in slurmctld's records as
    # COMPLETED, named after this run, commented with its rule, in its rule class's partition and
    # with its class's threads (at most the node's CPUs) as CPUs; none asked for a GPU.
    p = profile()
    gpu, partitions = gpu_rules(), _partitions()
    rules = re.findall(r"^(?:rule|checkpoint) (\w+):", run.stdout + run.stderr, flags=re.M)  # not localrule
    assert sorted(rules) == sorted(JOBS), rules
    assert len(submitted) == len(rules) == len(set(submitted.values()))
    assert set(submitted.values()) <= set(jobs), (submitted, jobs)
    assert len({jobs[i]["name"] for i in submitted.values()}) == 1  # the plugin names every job by its run
    ran = []
    for slurm_id in submitted.values():
        job, record = jobs[slurm_id], records[slurm_id]
        assert job["state"] == record["JobState"] == "COMPLETED", (slurm_id, job, record)
        rule = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", job["comment"]).group(1)
        ran.append(rule)
        assert job["partition"] == partitions[1 if rule in gpu else 0], (rule, job)
        assert record["NumCPUs"] == str(min(p["set-threads"][rule], cpus)), (rule, record)
        assert "gpu" not in record.get("TRES", "") + record.get("TresPerNode", ""), record  # device: cpu
    assert sorted(ran) == sorted(JOBS)

    # The outputs' array data equal the local run's (every HDF5 dataset, every parquet column).
    data = _data_files(work)
    assert data == _data_files(local) and len(data) >= 4, data
    for path in data:
        assert array_digest(work / path) == array_digest(local / path), path


def _partitions():
    """The profile's CPU partition (the cluster's default) and its GPU partition."""
    p = profile()
    return [p["default-resources"]["slurm_partition"],
            *sorted({p["set-resources"][r]["slurm_partition"] for r in gpu_rules()})]


def _run_on_slurm(work, cpus):
    """The run with the profile on a fresh cluster; the cluster is gone when this returns."""
    _workdir(work)
    with slurm_cluster(partitions=_partitions()) as cluster:
        folder, daemons = cluster.folder, dict(cluster.daemons)
        ports = [int(line.split("=")[1]) for line in cluster.conf.read_text().splitlines()
                 if line.startswith(("SlurmctldPort=", "SlurmdPort="))]
        # The README's command, plus what this one-node cluster needs: it has no accounting database
        # (so no sacct for the status and no accounts), jobs capped to the node's CPUs and memory,
        # and status checks after 2 s and every 2 s instead of 40 s and 10 s (these jobs take seconds).
        run = snakemake(work, TARGET, "--executor", "slurm", "--profile", "profiles/slurm",
                        "--workflow-profile", "none", "--configfile", "tiny.yaml",
                        "--slurm-status-command", "squeue", "--slurm-no-account",
                        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
                        "--max-threads", str(cluster.cpus), "--resources", f"mem_mb={cluster.memory_mb}",
                        env=cluster.env, timeout=280, check=False)
        log = run.stdout + run.stderr
        assert run.returncode == 0, f"{log[-6000:]}\n{cluster.logs()}"
        submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
        jobs = cluster.jobs()  # slurmctld's own records (MinJobAge=600 keeps finished jobs listed)
        records = {slurm_id: cluster.job(slurm_id) for slurm_id in submitted.values()}
        assert cluster.cpus == cpus
    # The daemons are down, and nothing this cluster started (slurmstepd, job steps) is left.
    assert all(proc.poll() is not None for proc in daemons.values()), daemons
    assert marked_processes(folder) == [] and not folder.exists()
    assert not any(_listening(port) for port in ports), ports
    return work, run, submitted, jobs, records
