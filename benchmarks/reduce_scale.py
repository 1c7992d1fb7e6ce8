"""The reduce side at config/paper.yaml's shape: peak memory and time of each reduce stage.

Writes a synthetic tidy metric table with paper.yaml's methods, metrics and sweep (one partition per
perturbation level, as the workflow's joins leave them in results/metrics/), sized by ``--images``, then
runs each reduce stage in its own process, as a workflow job would: ``aggregate`` (the summary with its
confidence intervals and the distribution figures' box statistics), ``statistics`` (Friedman, post-hoc,
across-model and mixed-model tables), ``papers`` (the paper tables that read the summary, the clean
rows and the statistics), and on request ``csv`` (the whole table as one CSV). Prints rows, seconds
and peak RSS per stage (the stage's process and its workers), and the extrapolation to the full
config (50,000 images), linear in rows.

    python benchmarks/reduce_scale.py --images 20 200 --work /tmp/reduce   # 0.23 M and 2.3 M rows
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_IMAGES = 50_000
STAGES = ("aggregate", "statistics", "papers", "csv")
DEFAULT_STAGES = STAGES[:3]


def paper_shape() -> tuple[list[str], list[str], list[tuple[str, float]], dict]:
    """Methods, metrics and (kind, level) sweep of config/paper.yaml, validated as the workflow does."""
    from cambench.config import perturbation_sweep, validate_config
    cfg = validate_config(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), ROOT / "config" / "schema.yaml",
                          workdir=ROOT)
    sweep = [("none", 0.0)] + [(k, float(lv)) for k, levels, _ in perturbation_sweep(cfg) for lv in levels]
    return list(cfg["cam"]["methods"]), list(cfg["metrics"]["compute"]), sweep, cfg


def write_table(work: Path, images: int, seed: int = 0) -> tuple[list[Path], int]:
    """One partition per level (cambench.tables), with the workflow's columns; robustness metrics skip the
    clean level."""
    from cambench.metrics import METRICS
    from cambench.tables import METRIC_COLUMNS, partition_path, write_partition
    methods, metrics, sweep, cfg = paper_shape()
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, images)
    files, rows = [], 0
    for kind, level in sweep:
        frames = []
        predictions = np.where(rng.random(images) < 0.2 * (kind != "none"), (labels + 1) % 4, labels)
        for method in sorted(methods):
            for metric in metrics:
                if kind == "none" and "reference" in METRICS.get(metric).meta.get("needs", ()):
                    continue
                params = {"combine": "harmonic", "similarity": "ssim"} if metric == "noise_robustness" else {}
                frames.append(pd.DataFrame({
                    "dataset": "shapes224", "model": "resnet50", "method": method, "perturbation": kind,
                    "level": level, "image_id": [f"test/c/{i:06d}" for i in range(images)], "label": labels,
                    "target": predictions, "prediction": predictions, "label_rank": 1 + (predictions != labels),
                    "clean_prediction": labels, "metric": metric, "value": rng.random(images),
                    "score": "prob", "params": json.dumps(params), "map_flags": np.zeros(images, np.uint8)}))
        table = pd.concat(frames, ignore_index=True)[METRIC_COLUMNS]
        path = partition_path(work / "metrics", "shapes224", "resnet50", kind, f"{level:g}")
        write_partition(table, path, metrics)
        files.append(path)
        rows += len(table)
    (work / "config.json").write_text(json.dumps(cfg, default=str))
    return files, rows


def run_stage(stage: str, work: Path, workers: int) -> None:
    """One stage, in this process (the parent measures it)."""
    cfg = json.loads((work / "config.json").read_text())
    table = work / "metrics"
    tables = {name: str(work / f"{name}.csv") for name in ("friedman", "posthoc", "kruskal", "mixed_model")}
    if stage == "aggregate":
        from cambench.aggregate import aggregate_metrics
        aggregate_metrics(table, work / "metric_summary.csv", work / "metric_distributions.parquet",
                          n_boot=cfg["stats"]["bootstrap"], seed=cfg["seed"],
                          bootstrap_max_n=cfg["stats"]["bootstrap_max_n"], workers=workers)
    elif stage == "statistics":
        from cambench.stats import run_statistics
        run_statistics(table, tables, cfg["stats"]["alpha"], cfg["stats"]["mixed_model_metrics"],
                       cfg["stats"]["mixed_model_max_images"], cfg["seed"], workers=workers)
    elif stage == "papers":
        from cambench.papers import write_paper_tables
        papers = {"sarkar2025_noise_robustness": ["resnet50"], "fu2020_xgradcam": ["resnet50"]}
        write_paper_tables(papers, work / "metric_summary.csv", table,
                           {k: tables[k] for k in ("friedman", "posthoc", "kruskal")}, cfg["cam"]["methods"],
                           {k: str(work / f"paper_{k}.csv") for k in papers}, work / "paper_index.csv",
                           n_boot=cfg["stats"]["bootstrap"], seed=cfg["seed"])
    elif stage == "csv":
        from cambench.tables import write_csv
        write_csv(table, work / "metrics.csv")


def _tree(pid: int) -> list[int]:
    """A process and its descendants (the stage and its pool's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _pss_bytes(pids: list[int]) -> int:
    """Proportional set size of the processes together: shared pages (the workers fork the stage's
    imports) counted once, as a cgroup (SLURM's memory limit) counts them."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def measure(work: Path, images: int, stages, workers: int) -> tuple[int, dict[str, tuple[float, float]]]:
    """Rows of the table, and (seconds, peak memory in GB) of each stage run in its own process; memory is
    the stage's and its workers' proportional set size together, sampled every 0.1 s."""
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _, rows = write_table(work, images)
    print(f"{images} images: {rows:,} rows, written in {time.perf_counter() - start:.1f} s")
    out = {}
    for stage in stages:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--work", str(work),
                                  "--workers", str(workers)])
        peak = 0
        while child.poll() is None:
            peak = max(peak, _pss_bytes(_tree(child.pid)))
            time.sleep(0.1)
        if child.returncode:
            sys.exit(f"stage {stage} failed (exit {child.returncode})")
        out[stage] = (time.perf_counter() - start, peak / 2**30)
        print(f"  {stage:<12}{out[stage][0]:>8.1f} s{out[stage][1]:>8.2f} GB peak memory (PSS, workers included)")
    return rows, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20, 200],
                        help="evaluation images, one run per value (paper.yaml: 50,000); the two largest "
                             "give the per-row slope the extrapolation uses")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cambench_reduce"))
    parser.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), choices=STAGES)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each stage (the rule's threads)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)   # internal: run one stage
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.work, args.workers)
        return
    runs = [measure(args.work / f"images{n}", n, args.stages, args.workers) for n in sorted(args.images)]
    if len(runs) < 2:
        return
    (rows_a, a), (rows_b, b) = runs[-2], runs[-1]
    full = rows_b * PAPER_IMAGES / sorted(args.images)[-1]
    print(f"extrapolated to {PAPER_IMAGES:,} images ({full:,.0f} rows), linear in rows from the two largest runs:")
    for stage in args.stages:
        per_row = [(b[stage][i] - a[stage][i]) / (rows_b - rows_a) for i in (0, 1)]
        print(f"  {stage:<12}{b[stage][0] + per_row[0] * (full - rows_b):>10.0f} s"
              f"{b[stage][1] + per_row[1] * (full - rows_b):>10.1f} GB peak memory")


if __name__ == "__main__":
    main()
