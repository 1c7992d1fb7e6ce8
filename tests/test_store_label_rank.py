"""The label's rank among the logits (/label_rank in heatmap files, the metric table's label_rank
column) and box_iou against annotated boxes end to end: written per batch, copied by shard joins,
absent in older files, and the ground truth the metric table records."""
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from cambench.aggregate import aggregate_metrics
from cambench.data import generate_shapes, prepare, read_dataset
from cambench.engine import CamResult
from cambench.jobs import HeatmapJob, MetricJob
from cambench.metrics.localisation import bounding_boxes
from cambench.models import build_model, save_checkpoint
from cambench.pipeline import compute_heatmaps, compute_metrics, metric_params
from cambench.store import HeatmapWriter, join_heatmaps, label_ranks, read_heatmaps


def argsort_ranks(logits, labels):
    """1 + the label's first position in the (stable, descending) sorted logits among equal values:
    the rank a tie shares with the best of its group."""
    order = torch.argsort(logits, dim=1, descending=True, stable=True)
    ordered = logits.gather(1, order)
    own = logits.gather(1, labels[:, None])
    return 1 + (ordered == own).int().argmax(dim=1)


def test_label_ranks_against_argsort_with_ties():
    logits = torch.tensor([[2.0, 5.0, 5.0, 1.0]] * 4)
    assert label_ranks(logits, torch.tensor([2, 1, 0, 3])).tolist() == [1, 1, 3, 4]
    g = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (200, 9), generator=g).float()  # many ties
    labels = torch.randint(0, 9, (200,), generator=g)
    ranks = label_ranks(logits, labels)
    assert torch.equal(ranks, argsort_ranks(logits, labels))
    assert ranks.dtype == torch.int64 and set(ranks.tolist()) > {1, 2}


def _result(logits):
    n = logits.shape[0]
    return CamResult({"a": torch.rand(n, 4, 4)}, {"a": torch.randn(n, 2, 2)}, {"a": torch.zeros(n, dtype=torch.uint8)},
                     logits, logits.argmax(1), logits.max(1).values)


def _write(path, logits, labels, rows, batch=3):
    attrs = {"provenance": json.dumps({}), "perturbation": "none", "level": 0.0,
             "rows": json.dumps([rows[0], rows[-1] + 1])}
    with HeatmapWriter(path, np.array([f"i{r}" for r in rows]), labels[rows], {"a": {}}, "float32", attrs) as w:
        for start in range(0, len(rows), batch):
            w.write(start, _result(logits[rows[start:start + batch]]))


def test_heatmap_files_store_label_rank_and_joins_copy_it(tmp_path):
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 3, (8, 5), generator=g).float()
    labels = np.arange(8) % 5
    expected = argsort_ranks(logits, torch.from_numpy(labels)).numpy()
    _write(tmp_path / "whole.h5", logits, labels, list(range(8)))
    assert np.array_equal(read_heatmaps(tmp_path / "whole.h5").label_rank, expected)
    shards = [tmp_path / "shard-0.h5", tmp_path / "shard-1.h5"]
    _write(shards[0], logits, labels, [0, 1, 2, 3, 4])
    _write(shards[1], logits, labels, [5, 6, 7])
    join_heatmaps(shards, tmp_path / "joined.h5")
    assert np.array_equal(read_heatmaps(tmp_path / "joined.h5").label_rank, expected)
    with h5py.File(tmp_path / "whole.h5", "a") as f:  # a file from before label ranks were stored
        del f["label_rank"]
    assert read_heatmaps(tmp_path / "whole.h5").label_rank is None
    with pytest.raises(ValueError, match=r"bad\.h5.*label outside 0\.\.4"):
        _write(tmp_path / "bad.h5", logits, np.full(8, 5), list(range(8)))


# ------------------------------------------------------------------------------------------------
# End to end: heatmaps -> metric table
# ------------------------------------------------------------------------------------------------

PARAMS = {"widths": [4, 8, 8, 8]}
METRICS = {"box_iou": {}, "pointing_game": {}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A shapes data set (masks only), a copy of it with annotated boxes, a model and gt-class heatmaps."""
    work = tmp_path_factory.mktemp("label_rank")
    generate_shapes(work / "data", work / "masks", {"train": 2, "test": 4}, classes=["disk", "cross", "square"],
                    image_size=32, clutter=2, seed=5)
    prepare("imagefolder", work / "data", work / "shapes.h5", mask_root=work / "masks")
    # boxes: each image's mask box under its label class, plus a whole-image box of another class
    shutil.copy(work / "shapes.h5", work / "boxed.h5")
    with h5py.File(work / "boxed.h5", "a") as f:
        labels, masks = f["labels"][:], torch.from_numpy(f["masks"][:])
        rows = np.flatnonzero(masks.flatten(1).any(1).numpy())
        own = bounding_boxes(masks[rows]).numpy().astype(np.float32)
        other = np.tile(np.array([0, 0, 32, 32], np.float32), (len(rows), 1))
        f["boxes"] = np.concatenate([own, other])
        f["box_image"] = np.concatenate([rows, rows]).astype(np.int64)
        f["box_label"] = np.concatenate([labels[rows], (labels[rows] + 1) % 3]).astype(np.int64)
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=3, **PARAMS)
    save_checkpoint(work / "m.pt", model.eval(), "small_cnn", dict(PARAMS, n_classes=3))
    compute_heatmaps(work / "shapes.h5", work / "m.pt", work / "hm.h5", HeatmapJob(
        perturbation="none", level=0.0, methods={"gradcam": {}}, target_layer="features.block4", split="test",
        class_source="gt", batch_size=5, dtype="float32", seed=0, device="cpu"))
    return work


def _metrics(work, dataset_file, name, metrics=METRICS, model="m.pt"):
    job = MetricJob(metrics=metrics, score="prob", memory_mb=64, perturbation="none", level=0.0, split="test",
                    seed=0, dataset=name, model="m", device="cpu", batch_size=5)
    return compute_metrics(work / dataset_file, work / model, work / "hm.h5", work / "hm.h5", work / f"{name}.parquet",
                           job)


def test_metric_table_records_label_rank_and_the_resolved_ground_truth(work):
    ds = read_dataset(work / "shapes.h5", "test")
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=3, **PARAMS).eval()
    with torch.no_grad():
        expected = label_ranks(model(ds.pixels(slice(None))), torch.from_numpy(ds.labels)).numpy()
    plain = _metrics(work, "shapes.h5", "plain")
    assert "label_rank" in plain.columns
    for metric, rows in plain.groupby("metric"):
        position = {image_id: i for i, image_id in enumerate(ds.ids)}
        assert np.array_equal(rows["label_rank"].to_numpy(), expected[[position[i] for i in rows["image_id"]]])
    box = plain[plain.metric == "box_iou"]
    assert {json.loads(p)["gt_box"] for p in box["params"]} == {"mask_bbox"}  # "auto" without boxes
    boxed = _metrics(work, "boxed.h5", "boxed")
    boxed_box = boxed[boxed.metric == "box_iou"]
    assert {json.loads(p)["gt_box"] for p in boxed_box["params"]} == {"boxes"}
    # the annotated box is the mask's box (the other class's whole-image box is ignored): same values
    assert list(boxed_box["image_id"]) == list(box["image_id"]) and len(box) > 3
    assert np.array_equal(boxed_box["value"].to_numpy(), box["value"].to_numpy())
    assert 0 < box["value"].max()
    # an old table (no label_rank column) aggregates beside a new one
    old = work / "old.parquet"
    pd.read_parquet(work / "plain.parquet").drop(columns="label_rank").to_parquet(old)
    summary = aggregate_metrics([old, work / "boxed.parquet"], work / "summary.csv", work / "boxes.parquet", n_boot=20,
                                seed=0)
    assert sorted(summary["dataset"].unique()) == ["boxed", "plain"] and len(summary) == 4


def test_gt_box_boxes_without_boxes_fails_before_any_model_work(work):
    metrics = {"box_iou": metric_params("box_iou", {"gt_box": "boxes"}, "prob")}
    # a missing model file would be the error if the check came after loading the model
    with pytest.raises(ValueError, match=r"(?s)shapes\.h5.*'plain'.*gt_box 'boxes' needs annotated"):
        _metrics(work, "shapes.h5", "plain", metrics=metrics, model="missing.pt")


@pytest.mark.parametrize("k, k_grid", [(50.0, None), ("adaptive", [25.0, 75.0])])
def test_metacam_ensembles_run_on_a_model_with_and_without_a_k_grid(work, k, k_grid):
    """The rule's call (scripts/metacam_ensembles.py passes k_grid): every subset of the components and
    each component's CRE, on a real model and data set file."""
    from cambench.pipeline import metacam_ensembles
    out = metacam_ensembles(work / "shapes.h5", work / "m.pt", work / f"ens_{k}.csv",
                            components=["gradcam", "layercam"], component_params={}, k=k, k_grid=k_grid,
                            consensus="gated_mean", metric_params={},
                            split="test", dataset="shapes", model="m", target_layer="features.block4", images=6,
                            batch_size=3, memory_mb=64, seed=0, device="cpu")
    assert list(out.subset[out.kind == "subset"]) == ["gradcam", "layercam", "gradcam+layercam"]
    assert set(out.subset[out.kind == "cre"]) == {"gradcam", "layercam"}
    assert np.isfinite(out.value).all() and (work / f"ens_{k}.csv").is_file()
