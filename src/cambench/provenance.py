"""Provenance stamped on every output: config hash, git commit, package versions, device, inputs."""
from __future__ import annotations

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
