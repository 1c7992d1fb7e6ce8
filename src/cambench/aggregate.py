"""The metric summary (means with confidence intervals) and the per-image distributions' box statistics,
block by block over the partitioned metric table (``cambench.tables``; docs/outputs.md §2.2).

A *block* is one (dataset, model, perturbation kind, level, metric); a summary *group* is one method of a
block. Each group's bootstrap has its own seed, drawn from the run's seed and the group's key, so its
interval does not depend on which other groups the run has or in which order they are processed (blocks
run in parallel workers, or on other machines). Bootstrap cost is bounded: groups of more than
``bootstrap_max_n`` images get the normal-approximation interval instead (the percentile bootstrap's own
large-n limit), and the summary's ``ci`` column says which interval each row has.
"""
from __future__ import annotations

import json
import logging
import zlib

import numpy as np
import pandas as pd
from scipy import stats

from .engine import FLAG_CONSTANT, FLAG_NONFINITE
from .metrics import METRICS
from .metrics.robustness import combine_robustness
from .tables import Partition, map_partitions, partitions, read_block
from .utils import atomic_path

log = logging.getLogger(__name__)

GROUP_KEYS = ["dataset", "model", "method", "perturbation", "level", "metric"]
SUMMARY_COLUMNS = GROUP_KEYS + ["mean", "ci_low", "ci_high", "n", "n_degenerate", "aggregate", "higher_is_better",
                                "score", "ci"]
BOX_COLUMNS = GROUP_KEYS + ["n", "mean", "q1", "med", "q3", "whislo", "whishi", "n_fliers", "fliers"]
SUMMARY_READ = ["method", "value", "label", "prediction", "clean_prediction", "params", "map_flags", "score"]
MAX_FLIERS = 200   # outliers kept per box for the distribution figures (a seeded subsample beyond)
CI_LEVEL = 0.95


def group_rng(seed: int, key) -> np.random.Generator:
    """The generator of one group: the run's seed and a checksum of the group's key (level as repr)."""
    text = "\x1f".join(repr(float(k)) if isinstance(k, float) else str(k) for k in key)
    return np.random.default_rng([int(seed), zlib.crc32(text.encode())])


def bootstrap_mean_ci(values: np.ndarray, classes: np.ndarray | None, n_boot: int, rng: np.random.Generator,
                      level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap CI of the mean, or with ``classes`` of the mean of class
    means, resampled within each class (stratified: every resample keeps each class's size, so each class
    mean is a bootstrap of that class and the point estimate's weighting is that of every resample)."""
    n = len(values)
    if classes is None:
        point, boots = values.mean(), values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    else:
        members = [np.flatnonzero(classes == c) for c in np.unique(classes)]
        point = np.mean([values[m].mean() for m in members])
        # one (n_boot, n_c) draw per class (a handful of classes: the loop is over classes, not resamples)
        boots = np.mean([values[m[rng.integers(0, len(m), size=(n_boot, len(m)))]].mean(axis=1) for m in members],
                        axis=0)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(point), float(lo), float(hi)


def bootstrap_robustness_ci(values: np.ndarray, unchanged: np.ndarray, n_boot: int, rng: np.random.Generator,
                            level: float = CI_LEVEL) -> tuple[float, float, float]:
    """``2CR / (C + R)`` (docs/metrics.md §5) and its percentile bootstrap CI, images resampled jointly;
    NaN when one of the two groups is empty."""
    point = combine_robustness(values, unchanged)
    if np.isnan(point):
        return point, point, point
    n = len(values)
    idx = rng.integers(0, n, size=(n_boot, n))
    same = unchanged[idx]
    v = values[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(same, v, 0).sum(1) / same.sum(1)
        r = np.where(~same, v, 0).sum(1) / (~same).sum(1)
        boots = 2 * c * r / (c + r)
    boots = boots[np.isfinite(boots)]
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if len(boots) else (np.nan, np.nan)
    return point, float(lo), float(hi)


def _normal(point: float, variance: float, level: float) -> tuple[float, float, float]:
    half = stats.norm.ppf((1 + level) / 2) * np.sqrt(variance)
    return float(point), float(point - half), float(point + half)


def normal_mean_ci(values: np.ndarray, classes: np.ndarray | None,
                   level: float = CI_LEVEL) -> tuple[float, float, float]:
    """The mean (or the mean of class means) and its normal-approximation interval: variance s^2 / n, or
    sum_c s_c^2 / n_c / K^2 for the mean of K class means (sample variances, ddof 1)."""
    if classes is None:
        return _normal(values.mean(), values.var(ddof=1) / len(values), level)
    members = [values[classes == c] for c in np.unique(classes)]
    variance = sum(m.var(ddof=1) / len(m) if len(m) > 1 else 0.0 for m in members) / len(members) ** 2
    return _normal(np.mean([m.mean() for m in members]), variance, level)


def normal_robustness_ci(values: np.ndarray, unchanged: np.ndarray,
                         level: float = CI_LEVEL) -> tuple[float, float, float]:
    """``2CR / (C + R)`` and its delta-method interval, C and R the means over the images whose prediction
    stayed and flipped (independent samples): Var = (2R^2/(C+R)^2)^2 Var C + (2C^2/(C+R)^2)^2 Var R."""
    point = combine_robustness(values, unchanged)
    if np.isnan(point):
        return point, point, point
    kept, flipped = values[unchanged], values[~unchanged]
    c, r = kept.mean(), flipped.mean()
    var_c = kept.var(ddof=1) / len(kept) if len(kept) > 1 else 0.0
    var_r = flipped.var(ddof=1) / len(flipped) if len(flipped) > 1 else 0.0
    total = (c + r) ** 2
    return _normal(point, (2 * r * r / total) ** 2 * var_c + (2 * c * c / total) ** 2 * var_r, level)


def summarise_group(group: pd.DataFrame, key: tuple, n_boot: int, seed: int, bootstrap_max_n: int) -> dict | None:
    """One summary row: one method's values of one block (``key`` = GROUP_KEYS); None when the harmonic
    robustness is undefined (no prediction flipped, or none kept: C alone is in 'consistency')."""
    entry = METRICS.get(key[-1])
    aggregate = entry.meta.get("aggregate", "mean")
    values = group["value"].to_numpy(dtype=float)
    bootstrap = len(values) <= bootstrap_max_n
    rng = group_rng(seed, key) if bootstrap else None
    if aggregate == "robustness" and json.loads(group["params"].iloc[0]).get("combine") == "harmonic":
        unchanged = (group["prediction"] == group["clean_prediction"]).to_numpy()
        point, lo, hi = (bootstrap_robustness_ci(values, unchanged, n_boot, rng) if bootstrap
                         else normal_robustness_ci(values, unchanged))
        if np.isnan(point):
            return None
        aggregate = "harmonic"
    else:
        aggregate = "class_mean" if aggregate == "class_mean" else "mean"
        classes = group["label"].to_numpy() if aggregate == "class_mean" else None
        point, lo, hi = (bootstrap_mean_ci(values, classes, n_boot, rng) if bootstrap
                         else normal_mean_ci(values, classes))
    # degenerate maps only (constant, NaN/Inf); bit 4 (Ablation-CAM's score <= 0) is not a degenerate map
    degenerate = int(((group["map_flags"] & (FLAG_CONSTANT | FLAG_NONFINITE)) != 0).sum()) \
        if "map_flags" in group else 0
    return dict(zip(GROUP_KEYS, key), mean=point, ci_low=lo, ci_high=hi, n=len(group), n_degenerate=degenerate,
                aggregate=aggregate, higher_is_better=entry.meta.get("higher_is_better"),
                score=group["score"].iloc[0], ci=f"bootstrap {n_boot}" if bootstrap else "normal")


def box_row(values: np.ndarray, key: tuple, seed: int) -> dict:
    """Box-plot statistics of one group's per-image values (matplotlib's: quartiles, whiskers at the most
    extreme values within 1.5 IQR, the mean, the outliers; NaN dropped), at most MAX_FLIERS outliers
    (a seeded subsample, kept in value order)."""
    from matplotlib.cbook import boxplot_stats

    values = values[np.isfinite(values)]
    row = dict(zip(GROUP_KEYS, key), n=len(values))
    if not len(values):
        return row | dict(mean=np.nan, q1=np.nan, med=np.nan, q3=np.nan, whislo=np.nan, whishi=np.nan, n_fliers=0,
                          fliers=[])
    box = boxplot_stats(values, whis=1.5)[0]
    fliers = np.sort(box["fliers"])
    if len(fliers) > MAX_FLIERS:
        fliers = np.sort(group_rng(seed, key).choice(fliers, MAX_FLIERS, replace=False))
    return row | dict(mean=float(box["mean"]), q1=float(box["q1"]), med=float(box["med"]), q3=float(box["q3"]),
                      whislo=float(box["whislo"]), whishi=float(box["whishi"]), n_fliers=len(box["fliers"]),
                      fliers=fliers.astype(float).tolist())


def summarise_block(block: pd.DataFrame, key: tuple, n_boot: int, seed: int,
                    bootstrap_max_n: int) -> tuple[list[dict], list[dict]]:
    """Summary rows and box rows of one block (``key`` = dataset, model, perturbation, level, metric)."""
    dataset, model, perturbation, level, metric = key
    summary, boxes = [], []
    for method, group in block.groupby("method", sort=True):
        group_key = (dataset, model, method, perturbation, level, metric)
        row = summarise_group(group, group_key, n_boot, seed, bootstrap_max_n)
        if row is not None:
            summary.append(row)
        boxes.append(box_row(group["value"].to_numpy(dtype=float), group_key, seed))
    return summary, boxes


def _summarise_blocks(blocks, n_boot: int, seed: int, bootstrap_max_n: int) -> tuple[list[dict], list[dict]]:
    """Summary rows and box rows of (key, block) pairs."""
    summary, boxes = [], []
    for key, block in blocks:
        s, b = summarise_block(block, key, n_boot, seed, bootstrap_max_n)
        summary += s
        boxes += b
    return summary, boxes


def _summarise_partition(part: Partition, n_boot: int, seed: int, bootstrap_max_n: int):
    blocks = (((*part.key, metric), read_block(part, metric, SUMMARY_READ)) for metric in part.metrics)
    return _summarise_blocks(blocks, n_boot, seed, bootstrap_max_n)


def _frames(summary: list[dict], boxes: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = pd.DataFrame(summary, columns=SUMMARY_COLUMNS).sort_values(GROUP_KEYS, kind="stable")
    dist = pd.DataFrame(boxes, columns=BOX_COLUMNS).sort_values(GROUP_KEYS, kind="stable")
    return out.reset_index(drop=True), dist.reset_index(drop=True)


def summary_table(table: pd.DataFrame, n_boot: int, seed: int, bootstrap_max_n: int = 1000):
    """The summary and box statistics of a whole in-memory metric table (small tables, tests)."""
    blocks = table.groupby(["dataset", "model", "perturbation", "level", "metric"], sort=True)
    return _frames(*_summarise_blocks(blocks, n_boot, seed, bootstrap_max_n))


def aggregate_metrics(inputs, output_summary, output_distributions, n_boot: int, seed: int,
                      bootstrap_max_n: int = 1000, workers: int = 1) -> pd.DataFrame:
    """The summary CSV (one row per group: mean, CI, n, degenerate maps) and the box statistics (parquet,
    for the distribution figures) of the metric table's partitions ``inputs`` (files or directories)."""
    parts = partitions(inputs)
    if not parts:
        raise ValueError(f"no metric table partitions in {inputs}")
    results = map_partitions(_summarise_partition, parts, workers, n_boot, seed, bootstrap_max_n)
    summary, boxes = _frames([r for s, _ in results for r in s], [r for _, b in results for r in b])
    with atomic_path(output_summary) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(output_distributions) as tmp:
        boxes.to_parquet(tmp, index=False)
    log.info("summary: %d rows, box statistics: %d rows, from %d partitions (%d metric rows)", len(summary),
             len(boxes), len(parts), sum(p.rows for p in parts))
    return summary
