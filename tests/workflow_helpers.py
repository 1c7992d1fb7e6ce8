"""Shared by the workflow tests: a copy of the workflow in a scratch folder, and Snakemake runs."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["Snakefile", "rules", "scripts", "config", "reports", "envs", "profiles"]


def copy_workflow(work: Path) -> None:
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)


def snakemake(workdir, *args, check=True, timeout=1200):
    run = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                         timeout=timeout)
    if check and run.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run
