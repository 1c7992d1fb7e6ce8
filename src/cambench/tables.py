"""The tidy metric table as a partitioned parquet data set (docs/outputs.md §2.2).

One file per (dataset, model, perturbation kind, level), written by the join of that level's metric shards::

    results/metrics/<dataset>/<model>/<kind>~<level>.parquet

Every file holds every column (the key columns included, constant within the file) and one row group per
metric, so a reader takes one *block* (dataset x model x kind x level x metric: images x methods rows) at a
time and the reduce side's memory is bounded by the largest block, not by the run. The directory reads
whole, without a copy, as one table: ``pandas.read_parquet("results/metrics")``,
``pyarrow.dataset.dataset("results/metrics")``, DuckDB's ``read_parquet('results/metrics/*/*/*.parquet')``.
The layout is not hive-style (``key=value`` folders): hive readers take partition columns from the path and
refuse files that also hold them, and the key columns inside each file keep their types (``level`` a float).
"""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .utils import atomic_path

METRIC_COLUMNS = ["dataset", "model", "method", "perturbation", "level", "image_id", "label", "target",
                  "prediction", "label_rank", "clean_prediction", "metric", "value", "score", "params", "map_flags"]
PARTITION_KEYS = ("dataset", "model", "perturbation", "level")
METADATA_KEY = b"cambench.partition"


def partition_path(root: str | Path, dataset: str, model: str, perturbation: str, level: str) -> Path:
    """Where the (dataset, model, kind, level) partition lives (``level`` as the workflow spells it)."""
    return Path(root) / dataset / model / f"{perturbation}~{level}.parquet"


@dataclass(frozen=True)
class Partition:
    """One (dataset, model, kind, level) of the table: its file, and the metrics it holds (in row-group
    order). ``shared``: the file holds other keys too (a tidy table written by hand), so reads filter on
    the key as well as the metric."""
    path: Path
    dataset: str
    model: str
    perturbation: str
    level: float
    metrics: tuple[str, ...]
    rows: int
    shared: bool = False

    @property
    def key(self) -> tuple[str, str, str, float]:
        return self.dataset, self.model, self.perturbation, self.level


def write_partition(table: pd.DataFrame, output: str | Path, metric_order: list[str]) -> pd.DataFrame:
    """Write one partition: rows ordered metric (``metric_order``, then any other by name), method, then as
    given (image in split order), one row group per metric; the key and metrics in the file's metadata.
    Returns the table in written order."""
    keys = {k: table[k].unique().tolist() for k in PARTITION_KEYS}
    several = {k: v for k, v in keys.items() if len(v) != 1}
    if several:
        raise ValueError(f"{output}: a partition holds one value of each of {list(PARTITION_KEYS)}, got {several}")
    present = set(table["metric"])
    metrics = [m for m in metric_order if m in present] + sorted(present - set(metric_order))
    position = {m: i for i, m in enumerate(metrics)}
    table = table.assign(_metric=table["metric"].map(position), _row=range(len(table)))
    table = table.sort_values(["_metric", "method", "_row"], kind="stable").drop(columns=["_metric", "_row"])
    table = table.reset_index(drop=True)
    info = {k: v[0] for k, v in keys.items()} | {"level": float(keys["level"][0]), "metrics": metrics}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(info).encode()})
    with atomic_path(output) as tmp:
        with pq.ParquetWriter(tmp, arrow.schema) as writer:
            start = 0
            for metric in metrics:
                size = int((table["metric"] == metric).sum())
                writer.write_table(arrow.slice(start, size), row_group_size=max(size, 1))
                start += size
    return table


def read_partitions(path: str | Path) -> list[Partition]:
    """The partitions of one file: its key and metrics from the footer, or, for files without cambench's
    metadata (tidy tables written by hand), from its key and metric columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metric table file not found: {path}")
    meta = pq.ParquetFile(path).metadata
    raw = (meta.metadata or {}).get(METADATA_KEY)
    if raw is not None:
        info = json.loads(raw)
        return [Partition(path, info["dataset"], info["model"], info["perturbation"], float(info["level"]),
                          tuple(info["metrics"]), meta.num_rows)]
    columns = pq.read_table(path, columns=[*PARTITION_KEYS, "metric"]).to_pandas()
    out = []
    for (dataset, model, perturbation, level), rows in columns.groupby(list(PARTITION_KEYS), sort=False):
        out.append(Partition(path, str(dataset), str(model), str(perturbation), float(level),
                             tuple(dict.fromkeys(rows["metric"])), len(rows), shared=True))
    return out


def partitions(paths) -> list[Partition]:
    """Every partition of ``paths`` (files, or directories read recursively), sorted by key; one key in
    two places is an error (the table would count its rows twice)."""
    files = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        files += sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    parts = sorted((part for f in files for part in read_partitions(f)), key=lambda part: part.key)
    for a, b in zip(parts, parts[1:]):
        if a.key == b.key:
            raise ValueError(f"{a.path} and {b.path} both hold (dataset, model, perturbation, level) {a.key}")
    return parts


def read_block(part: Partition, metric: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One metric's rows of a partition (its row group: row-group statistics skip the others)."""
    filters = [("metric", "==", metric)]
    if part.shared:
        filters += [(k, "==", v) for k, v in zip(PARTITION_KEYS, part.key)]
    return pq.read_table(part.path, columns=columns, filters=filters).to_pandas()


def map_partitions(function, items: list, workers: int, *args) -> list:
    """``function(item, *args)`` for every item (a partition or a group of them), in order: inline for one
    worker, else in a process pool, one item per task, so each worker holds one item's blocks at a time."""
    if workers <= 1 or len(items) <= 1:
        return [function(item, *args) for item in items]
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(function, item, *args) for item in items]
        return [f.result() for f in futures]


def write_csv(paths, output: str | Path) -> int:
    """The whole table as one CSV, written block by block (memory of one block); returns its rows."""
    rows = 0
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
        for part in partitions(paths):
            for metric in part.metrics:
                block = read_block(part, metric)
                block.to_csv(handle, index=False, header=rows == 0)
                rows += len(block)
    return rows
