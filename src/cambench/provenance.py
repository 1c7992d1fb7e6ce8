"""Provenance stamped on every output: config hash, git commit, package versions, device, inputs."""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("cambench", "torch", "torchvision", "numpy", "h5py", "pandas", "scipy", "statsmodels",
            "snakemake", "pillow")


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON form of the config (first 16 hex digits)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def git_commit(where: str = ".") -> str:
    """HEAD of the repository containing ``where``, suffixed ``-dirty`` if tracked files changed."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=where, capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=None)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_description(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if device.index is None else device.index} " \
               f"{torch.cuda.get_device_name(device)}"
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(config: dict | None = None, inputs: list[str | Path] = (), seed: int | None = None,
               device: torch.device | str | None = None, **extra) -> dict:
    """A JSON-serialisable record; store it with ``json.dumps`` in every output's metadata."""
    return {
        "config_hash": config_hash(config) if config is not None else None,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device_description(device) if device is not None else None,
        "seed": seed,
        "inputs": {str(p): sha256_file(p) for p in inputs},
        **extra,
    }


# ------------------------------------------------------------------------------------------------
# The run's provenance section (rule provenance): lineage of every output, runtimes, software
# ------------------------------------------------------------------------------------------------

def snakemake_record(path: str | Path, metadata_dir: str | Path = ".snakemake/metadata") -> dict | None:
    """The job record Snakemake keeps for an output (rule, inputs, params, start and end times).

    Snakemake's file persistence stores one JSON per output under ``.snakemake/metadata``, named
    by the url-safe base64 of the path (split into ``@``-prefixed folders past the name limit).
    None when there is no record (a file made outside Snakemake, or another persistence backend).
    """
    b64 = base64.urlsafe_b64encode(str(path).encode()).decode()
    limit = 254  # PC_NAME_MAX - 1 on Linux file systems
    parts = [b64[i:i + limit] for i in range(0, len(b64), limit)]
    record = Path(metadata_dir).joinpath(*["@" + p for p in parts[:-1]], parts[-1])
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def embedded_provenance(path: str | Path) -> dict | None:
    """The provenance an output carries itself: the HDF5 attribute, or the parquet table's attrs."""
    path = Path(path)
    try:
        if path.suffix == ".h5":
            import h5py
            with h5py.File(path, "r") as f:
                text = f.attrs.get("provenance")
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq
            meta = pq.read_schema(path).metadata or {}
            attrs = json.loads(meta.get(b"PANDAS_ATTRS", b"{}"))
            text = attrs.get("provenance")
        elif path.suffix == ".pt":
            meta = path.with_name("train.json")
            text = json.dumps(json.loads(meta.read_text()).get("provenance")) if meta.is_file() else None
        else:
            return None
    except (OSError, ValueError, KeyError):
        return None
    if text is None:
        return None
    # Never evaluated: JSON only (a file's attribute is data, not code).
    try:
        value = json.loads(text if isinstance(text, str) else bytes(text).decode())
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def lineage(outputs: list[str | Path], metadata_dir: str | Path = ".snakemake/metadata") -> list[dict]:
    """One entry per output: the rule that made it, its inputs, times, size and sha256."""
    rows = []
    for out in outputs:
        path = Path(out)
        record = snakemake_record(out, metadata_dir) or {}
        start, end = record.get("starttime"), record.get("endtime")
        rows.append({
            "output": str(out),
            "rule": record.get("rule", "unknown"),
            "inputs": list(record.get("input", [])),
            "log": list(record.get("log", [])),
            "started": _iso(start),
            "finished": _iso(end),
            "seconds": round(end - start, 3) if start is not None and end is not None else None,
            "bytes": path.stat().st_size if path.is_file() else None,
            "sha256": sha256_file(path) if path.is_file() else None,
        })
    return rows


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def read_benchmarks(folder: str | Path) -> list[dict]:
    """Snakemake ``benchmark:`` files (TSV: s, max_rss, ...) under ``folder``, one row per job."""
    rows = []
    for tsv in sorted(Path(folder).rglob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        header, values = lines[0].split("\t"), lines[1].split("\t")
        row = dict(zip(header, values))
        rows.append({"job": str(tsv.relative_to(folder).with_suffix("")),
                     "seconds": _number(row.get("s")), "max_rss_mb": _number(row.get("max_rss")),
                     "cpu_time_s": _number(row.get("cpu_time"))})
    return rows


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def rule_runtimes(jobs: list[dict]) -> list[dict]:
    """Per rule: jobs, total, mean and max seconds (from the lineage's start and end times)."""
    by_rule: dict[str, list[float]] = {}
    seen = set()
    for job in jobs:
        # A job with several outputs counts once. Times have one-second resolution, so two jobs of a rule
        # can share them: the inputs and log tell them apart.
        key = (job["rule"], tuple(job["inputs"]), tuple(job["log"]), job["started"], job["finished"])
        if job["seconds"] is None or key in seen:
            continue
        seen.add(key)
        by_rule.setdefault(job["rule"], []).append(job["seconds"])
    return [{"rule": rule, "jobs": len(times), "total_s": round(sum(times), 2),
             "mean_s": round(sum(times) / len(times), 2), "max_s": round(max(times), 2)}
            for rule, times in sorted(by_rule.items(), key=lambda kv: -sum(kv[1]))]


def dataset_summary(path: str | Path) -> dict | None:
    """Name, format, source, classes and size of a prepared dataset file (from its attributes)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            return {"file": str(path), "format": str(attrs.get("format", "")),
                    "source_root": str(attrs.get("source_root", "")),
                    "classes": [str(c) for c in json.loads(attrs.get("class_names", "[]"))],
                    "images": int(f["labels"].shape[0]) if "labels" in f else None,
                    "splits": [str(s) for s in json.loads(attrs.get("splits", "[]"))]}
    except (OSError, ValueError, KeyError):
        return None


def run_provenance(config: dict, outputs: list[str | Path], benchmarks_dir: str | Path = "results/benchmarks",
                   metadata_dir: str | Path = ".snakemake/metadata") -> dict:
    """Everything the report's provenance section shows, as one JSON-serialisable record."""
    jobs = lineage(outputs, metadata_dir)
    embedded = {str(o): p for o in outputs if (p := embedded_provenance(o)) is not None}
    devices = sorted({p["device"] for p in embedded.values() if p.get("device")})
    seeds = sorted({p["seed"] for p in embedded.values() if p.get("seed") is not None})
    inputs = {}
    for p in embedded.values():
        inputs.update(p.get("inputs") or {})
    commits = sorted({p["git_commit"] for p in embedded.values() if p.get("git_commit")})
    datasets = [d for o in outputs if Path(o).name == "dataset.h5" and (d := dataset_summary(o))]
    return {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "output_commits": commits,
        "config_hash": config_hash(config),
        "config": config,
        "packages": package_versions(),
        "platform": f"{platform.platform()} ({platform.machine()}, {os.cpu_count()} cores)",
        "devices": devices,
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "seed": config.get("seed"),
        "output_seeds": seeds,
        "input_checksums": dict(sorted(inputs.items())),
        "datasets": datasets,
        "rule_runtimes": rule_runtimes(jobs),
        "benchmarks": read_benchmarks(benchmarks_dir) if Path(benchmarks_dir).is_dir() else [],
        "lineage": jobs,
    }
