"""The GPU suite a lent machine runs in one call: every benchmark in it must import and parse its
arguments with the code as it is, or the lease is spent finding out."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_check_finds_every_benchmark_importable(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--check", str(tmp_path)],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    suite = (ROOT / "benchmarks" / "gpu_suite.sh").read_text()
    steps = [line.split()[1] for line in suite.splitlines() if line.startswith("step ")]
    assert len(steps) == 8 and all(f"ok   {name}" in run.stdout for name in steps), run.stdout
    assert "torch" in (tmp_path / "device.txt").read_text()


def test_gpu_suite_check_fails_on_a_benchmark_that_does_not_import(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    suite = (ROOT / "benchmarks" / "gpu_suite.sh").read_text()
    (bench / "gpu_suite.sh").write_text(suite)
    for name in {line.split()[3] for line in suite.splitlines() if line.startswith("step ")}:
        (bench / name).write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    (bench / "road.py").write_text("import a_package_that_is_not_there\n")
    run = subprocess.run(["bash", str(bench / "gpu_suite.sh"), "--check", str(tmp_path / "out")],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "FAIL road: ModuleNotFoundError: No module named 'a_package_that_is_not_there'" in run.stdout
    assert "ok   cam_engine" in run.stdout


def test_reduce_scale_benchmark_runs_and_extrapolates(tmp_path):
    """The reduce-side benchmark (a CPU benchmark, not in the GPU suite) keeps running with the code as it
    is: a paper.yaml-shaped table at two tiny sizes, the aggregate stage, the extrapolation to 50,000 images."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reduce_scale.py"), "--images", "2", "4",
                          "--stages", "aggregate", "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 images: 22,830 rows" in run.stdout and "4 images: 45,660 rows" in run.stdout
    assert "extrapolated to 50,000 images (570,750,000 rows)" in run.stdout
    summary = (tmp_path / "images4" / "metric_summary.csv").read_text().splitlines()
    # methods x (clean: no robustness metric; 50 levels: all but the harmonic noise robustness, which needs a
    # flipped prediction, drawn at random here)
    assert 1 + 15 * (15 - 4 + 50 * 14) <= len(summary) <= 1 + 15 * (15 - 4 + 50 * 15)
