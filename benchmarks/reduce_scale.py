"""The reduce side at config/paper.yaml's shape: peak memory and time of each reduce stage.

Writes a synthetic tidy metric table with paper.yaml's methods, metrics and sweep (one parquet file
per perturbation level, as the workflow's metric jobs leave them), sized by ``--images``, then runs
each reduce stage in its own process, as a workflow job would: ``aggregate`` (the tidy table, its
CSV and the summary with bootstrap CIs), ``statistics`` (Friedman, post-hoc, across-model and
mixed-model tables) and ``papers`` (the paper tables that read the summary, the table and the
statistics). Prints rows, seconds and peak RSS per stage, and the linear extrapolation to the rows
of the full config (50,000 images).

    python benchmarks/reduce_scale.py --images 20 200 --work /tmp/reduce   # 0.23 M and 2.3 M rows
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_IMAGES = 50_000
STAGES = ("aggregate", "statistics", "papers")


def paper_shape() -> tuple[list[str], list[str], list[tuple[str, float]], dict]:
    """Methods, metrics and (kind, level) sweep of config/paper.yaml, validated as the workflow does."""
    from cambench.config import perturbation_sweep, validate_config
    cfg = validate_config(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()), ROOT / "config" / "schema.yaml",
                          workdir=ROOT)
    sweep = [("none", 0.0)] + [(k, float(lv)) for k, levels, _ in perturbation_sweep(cfg) for lv in levels]
    return list(cfg["cam"]["methods"]), list(cfg["metrics"]["compute"]), sweep, cfg


def write_table(work: Path, images: int, seed: int = 0) -> tuple[list[Path], int]:
    """One parquet file per level, with the workflow's columns; robustness metrics skip the clean level."""
    from cambench.metrics import METRICS
    from cambench.pipeline import METRIC_COLUMNS
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
        path = work / "levels" / f"{kind}~{level:g}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)
        files.append(path)
        rows += len(table)
    (work / "config.json").write_text(json.dumps(cfg, default=str))
    return files, rows


def run_stage(stage: str, work: Path) -> None:
    """One stage, in this process (the parent measures it)."""
    cfg = json.loads((work / "config.json").read_text())
    tables = {name: str(work / f"{name}.csv") for name in ("friedman", "posthoc", "kruskal", "mixed_model")}
    if stage == "aggregate":
        from cambench.pipeline import aggregate_metrics
        aggregate_metrics(sorted((work / "levels").glob("*.parquet")), work / "metrics.parquet", work / "metrics.csv",
                          work / "metric_summary.csv", n_boot=cfg["stats"]["bootstrap"], seed=cfg["seed"])
    elif stage == "statistics":
        from cambench.stats import run_statistics
        run_statistics(str(work / "metrics.parquet"), tables, cfg["stats"]["alpha"],
                       cfg["stats"]["mixed_model_metrics"])
    elif stage == "papers":
        from cambench.papers import write_paper_tables
        papers = {"sarkar2025_noise_robustness": ["resnet50"], "fu2020_xgradcam": ["resnet50"]}
        write_paper_tables(papers, work / "metric_summary.csv", work / "metrics.parquet",
                           {k: tables[k] for k in ("friedman", "posthoc", "kruskal")}, cfg["cam"]["methods"],
                           {k: str(work / f"paper_{k}.csv") for k in papers}, work / "paper_index.csv",
                           n_boot=cfg["stats"]["bootstrap"], seed=cfg["seed"])


def measure(work: Path, images: int, stages) -> tuple[int, dict[str, tuple[float, float]]]:
    """Rows of the table, and (seconds, peak RSS in GB) of each stage run in its own process."""
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _, rows = write_table(work, images)
    print(f"{images} images: {rows:,} rows, written in {time.perf_counter() - start:.1f} s")
    out = {}
    for stage in stages:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--work", str(work)])
        _, status, usage = os.wait4(child.pid, 0)   # this child's own peak RSS (KiB on Linux)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"stage {stage} failed (exit {os.waitstatus_to_exitcode(status)})")
        out[stage] = (time.perf_counter() - start, usage.ru_maxrss / 2**20)
        print(f"  {stage:<12}{out[stage][0]:>8.1f} s{out[stage][1]:>8.2f} GB peak RSS")
    return rows, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20, 200],
                        help="evaluation images, one run per value (paper.yaml: 50,000); the two largest "
                             "give the per-row slope the extrapolation uses")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cambench_reduce"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)   # internal: run one stage
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.work)
        return
    runs = [measure(args.work / f"images{n}", n, args.stages) for n in sorted(args.images)]
    if len(runs) < 2:
        return
    (rows_a, a), (rows_b, b) = runs[-2], runs[-1]
    full = rows_b * PAPER_IMAGES / sorted(args.images)[-1]
    print(f"extrapolated to {PAPER_IMAGES:,} images ({full:,.0f} rows), linear in rows from the two largest runs:")
    for stage in args.stages:
        per_row = [(b[stage][i] - a[stage][i]) / (rows_b - rows_a) for i in (0, 1)]
        print(f"  {stage:<12}{b[stage][0] + per_row[0] * (full - rows_b):>10.0f} s"
              f"{b[stage][1] + per_row[1] * (full - rows_b):>10.0f} GB peak RSS")


if __name__ == "__main__":
    main()
