"""Compare two runs' results folders value by value: are a refactor's outputs unchanged?

    python benchmarks/compare_results.py BEFORE/results AFTER/results

Compares, exactly (NaN equal to NaN):
* every metric partition ``metrics/<dataset>/<model>/<kind>~<level>.parquet``, rows sorted by the key
  columns (docs/outputs.md §2.2);
* every dataset of every HDF5 file (heatmaps, perturbed images, data sets; docs/outputs.md §3), and the
  files' attributes except provenance, which records the commit and the time;
* every CSV under ``tables/`` but the run's timings (``lineage.csv``, ``runtimes.csv``, the
  ``train_seconds`` of ``models.csv``).
Prints one line per kind of file and exits 1 on the first kind with a difference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

VOLATILE_ATTRS = {"provenance"}  # commit, time, package versions: differ between any two runs
TIMING_TABLES = {"lineage.csv", "runtimes.csv"}  # start times and durations
TIMING_COLUMNS = {"train_seconds"}


def _equal_arrays(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _h5_items(path: Path) -> dict[str, object]:
    """name -> array for datasets, 'name@attr' -> value for attributes (volatile ones left out)."""
    items: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            for key, value in obj.attrs.items():
                if key not in VOLATILE_ATTRS:
                    items[f"{name}@{key}"] = value
            if isinstance(obj, h5py.Dataset):
                items[name] = obj[()]
        for key, value in f.attrs.items():
            if key not in VOLATILE_ATTRS:
                items[f"/@{key}"] = value
        f.visititems(visit)
    return items


def compare_h5(before: Path, after: Path) -> list[str]:
    a, b = _h5_items(before), _h5_items(after)
    diffs = [f"{after}: only in one run: {sorted(set(a) ^ set(b))[:5]}"] if set(a) != set(b) else []
    for name in sorted(set(a) & set(b)):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if not _equal_arrays(x, y):
            diffs.append(f"{after}:{name} differs")
    return diffs


def _sorted_frame(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    frame = frame.drop(columns=[c for c in frame.columns if c in TIMING_COLUMNS])
    keys = [c for c in ("dataset", "model", "kind", "level", "metric", "method", "image_id") if c in frame]
    return frame.sort_values(keys or list(frame.columns)).reset_index(drop=True) if len(frame) else frame


def compare_tables(before: Path, after: Path) -> list[str]:
    try:
        pd.testing.assert_frame_equal(_sorted_frame(before), _sorted_frame(after), check_exact=True)
    except AssertionError as err:
        return [f"{after}: {str(err).splitlines()[0]}"]
    return []


def compare(before: Path, after: Path) -> int:
    kinds = {"metric partitions": "metrics/**/*.parquet", "HDF5 files": "**/*.h5", "tables": "tables/*.csv"}
    status = 0
    for kind, pattern in kinds.items():
        names = {p.relative_to(before) for p in before.glob(pattern) if p.name not in TIMING_TABLES}
        other = {p.relative_to(after) for p in after.glob(pattern) if p.name not in TIMING_TABLES}
        diffs = [f"only in one run: {sorted(map(str, names ^ other))[:5]}"] if names != other else []
        compare_one = compare_h5 if kind == "HDF5 files" else compare_tables
        for name in sorted(names & other):
            diffs += compare_one(before / name, after / name)
        values = ""
        if kind == "metric partitions":
            values = f", {sum(len(pd.read_parquet(before / n)) for n in names & other):,} rows"
        print(f"{kind}: {len(names & other)} compared{values}: "
              + ("identical" if not diffs else f"{len(diffs)} differences, e.g. {diffs[:3]}"))
        status |= bool(diffs)
    return status


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(compare(Path(sys.argv[1]), Path(sys.argv[2])))
