"""Shards: per-shard heatmap files joined without copying, metric tables joined in unsharded order."""
import json

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from cambench.engine import CamResult
from cambench.pipeline import join_metric_tables
from cambench.store import HeatmapWriter, join_heatmaps, read_heatmaps
from cambench.tables import partitions, read_block

N, METHODS = 7, {"a": {}, "b": {"x": 1}}


def _result(rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(rows)
    maps = {m: torch.rand(n, 4, 4, generator=g) for m in METHODS}
    return CamResult(maps, {m: torch.randn(n, 2, 2, generator=g) for m in METHODS},
                     {m: torch.tensor([i % 2 for i in rows], dtype=torch.uint8) for m in METHODS},
                     torch.randn(n, 3, generator=g), torch.tensor(rows) % 3, torch.randn(n, generator=g),
                     weights={"a": torch.randn(n, 5, generator=g)})


def _write(path, rows):
    ids = np.array([f"img{i}" for i in rows])
    attrs = {"provenance": json.dumps({"seed": 0}), "perturbation": "none", "level": 0.0,
             "rows": json.dumps([rows[0], rows[-1] + 1])}
    with HeatmapWriter(path, ids, np.array(rows) % 3, METHODS, "float16", attrs) as w:
        r = _result(list(range(N)))
        w.write(0, CamResult({m: v[rows] for m, v in r.maps.items()}, {m: v[rows] for m, v in r.raw.items()},
                             {m: v[rows] for m, v in r.flags.items()}, r.logits[rows], r.targets[rows],
                             r.scores[rows], weights={m: v[rows] for m, v in r.weights.items()}))


@pytest.fixture
def files(tmp_path):
    _write(tmp_path / "whole.h5", list(range(N)))
    (tmp_path / "lvl").mkdir()
    for k, rows in enumerate([[0, 1, 2], [3, 4, 5], [6]]):
        _write(tmp_path / "lvl" / f"shard-{k:04d}.h5", rows)
    return tmp_path


def test_joined_file_reads_like_the_unsharded_file(files):
    shards = sorted((files / "lvl").iterdir())
    assert join_heatmaps(shards, files / "lvl.h5") == {"images": N, "shards": 3}
    whole, joined = read_heatmaps(files / "whole.h5", raw=True), read_heatmaps(files / "lvl.h5", raw=True)
    assert list(joined.ids) == list(whole.ids)
    for m in METHODS:
        assert np.array_equal(joined.maps[m], whole.maps[m]) and np.array_equal(joined.raw[m], whole.raw[m])
        assert np.array_equal(joined.flags[m], whole.flags[m])
    assert np.array_equal(joined.weights["a"], whole.weights["a"]) and np.array_equal(joined.scores, whole.scores)
    assert json.loads(joined.attrs["rows"]) == [0, N]
    assert [s["file"] for s in json.loads(joined.attrs["provenance"])["shards"]] == [
        "lvl/shard-0000.h5", "lvl/shard-0001.h5", "lvl/shard-0002.h5"]
    # the maps are not copied: they are virtual datasets over the shards
    with h5py.File(files / "lvl.h5") as f:
        mapped = [f"{group}/{m}" for group in ("heatmaps", "raw") for m in METHODS] + ["weights/a"]
        assert all(f[name].is_virtual for name in mapped), [(n, f[n].is_virtual) for n in mapped]
        assert not f["scores"].is_virtual  # the small per-image columns are copied
    # a missing shard is an error, never silent fill values
    shards[1].unlink()
    with pytest.raises(ValueError, match=r"lvl.h5: shard file\(s\) \['lvl/shard-0001.h5'\] .* missing"):
        read_heatmaps(files / "lvl.h5")


def test_shards_that_do_not_tile_the_split_are_refused(files):
    shards = sorted((files / "lvl").iterdir())
    with pytest.raises(ValueError, match=r"shard-0002.h5: shard rows \[6, 7\) do not follow .*expected start 3"):
        join_heatmaps([shards[0], shards[2]], files / "bad.h5")
    assert not (files / "bad.h5").exists()


def test_metric_tables_join_into_one_partition_metric_by_metric(tmp_path):
    rows = [dict(dataset="d", model="m", perturbation="gaussian", level=0.1, method=m, metric=k, image_id=f"i{i}",
                 value=float(i)) for m in ("b", "a") for k in ("y", "z") for i in range(5)]
    whole = pd.DataFrame(rows)
    parts = [whole[whole.image_id.isin(ids)] for ids in (["i0", "i1"], ["i2", "i3"], ["i4"])]
    # shard 0 lacks metric 'z' for method 'b' (a metric that applies to none of its images)
    parts[0] = parts[0][~((parts[0].method == "b") & (parts[0].metric == "z"))]
    kept = whole.drop(whole[(whole.method == "b") & (whole.metric == "z") & whole.image_id.isin(["i0", "i1"])].index)
    # metric in the config's order (z before y), then method, then image in split order
    expected = pd.concat([kept[(kept.metric == k) & (kept.method == m)] for k in ("z", "y") for m in ("a", "b")])
    paths = []
    for k, part in enumerate(parts):
        paths.append(tmp_path / f"{k}.parquet")
        part.to_parquet(paths[-1], index=False)
    joined = join_metric_tables(paths, tmp_path / "j.parquet", metric_order=["z", "y"])
    assert joined.reset_index(drop=True).equals(expected.reset_index(drop=True))
    assert pd.read_parquet(tmp_path / "j.parquet").equals(joined)
    # one row group per metric, and the partition's key in the footer: a reader takes one metric at a time
    file = pq.ParquetFile(tmp_path / "j.parquet")
    assert [file.read_row_group(i).column("metric").unique().to_pylist() for i in range(file.num_row_groups)] == [
        ["z"], ["y"]]
    (part,) = partitions([tmp_path / "j.parquet"])
    assert part.key == ("d", "m", "gaussian", 0.1) and part.metrics == ("z", "y") and not part.shared
    assert read_block(part, "y").equals(expected[expected.metric == "y"].reset_index(drop=True))
    # a shard of another level in the list is refused, and nothing is written
    whole.assign(level=0.2).to_parquet(tmp_path / "other.parquet", index=False)
    with pytest.raises(ValueError, match=r"one value of each .*'level': \[0.1, 0.2\]"):
        join_metric_tables([paths[0], tmp_path / "other.parquet"], tmp_path / "bad.parquet", ["z", "y"])
    assert not (tmp_path / "bad.parquet").exists()
