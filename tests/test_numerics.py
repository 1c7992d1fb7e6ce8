"""Degenerate numerics end to end: models whose activations are constant, whose gradients are zero,
or whose softmax saturates go through the heatmap and metric stages (every method, every metric,
fp16 storage). Nothing non-finite reaches a file, and the degenerate maps are flagged in the tables."""
import copy
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from workflow_helpers import ROOT

from cambench.aggregate import aggregate_metrics
from cambench.data import generate_shapes, prepare
from cambench.engine import FLAG_CONSTANT, FLAG_NONFINITE, postprocess
from cambench.jobs import HeatmapJob, MetricJob
from cambench.metrics import metrics as registered_metrics
from cambench.models import build_model, save_checkpoint
from cambench.pipeline import compute_heatmaps, compute_metrics, metric_params
from cambench.store import HeatmapWriter, read_heatmaps

DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
METHODS = {k: v for k, v in DEFAULT["cam"]["methods"].items() if k not in ("amecam", "sycam")}
METHODS["sycam"] = {"expression": "relu(gradcam)"}
# Every registered metric, with the default config's parameters shrunk to a few steps.
METRICS = {name: copy.deepcopy(DEFAULT["metrics"]["compute"].get(name, {})) for name in registered_metrics()}
METRICS["deletion_auc"]["steps"] = METRICS["insertion_auc"]["steps"] = 4
METRICS["max_sensitivity"]["samples"] = 1
PARAMS = {"widths": [4, 8, 8, 8]}


def _constant_activations(model):
    """block4's convolution outputs zeros; its BN shift makes every activation map the constant 0.5."""
    model.features.block4.conv.weight.data.zero_()
    model.features.block4.bn.bias.data.fill_(0.5)


def _zero_gradients(model):
    """The head ignores the features: every gradient to the target layer is exactly zero."""
    model.fc.weight.data.zero_()


def _saturated_softmax(model):
    """Logits 10^4 apart: the float32 softmax is exactly one-hot and its gradients underflow to zero."""
    model.fc.weight.data.mul_(1e4)
    model.fc.bias.data.mul_(1e4)


DEGENERATE = {"constant_activations": _constant_activations, "zero_gradients": _zero_gradients,
              "saturated_softmax": _saturated_softmax}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    work = tmp_path_factory.mktemp("numerics")
    generate_shapes(work / "data", work / "masks", {"train": 2, "test": 2}, classes=["disk", "cross", "square"],
                    image_size=32, clutter=2, seed=3)
    prepare("imagefolder", work / "data", work / "shapes.h5", mask_root=work / "masks")
    return work


def _checkpoint(work, case, damage=None):
    """The test network (seed 0), damaged by ``damage`` when given, saved as ``case``.pt."""
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=3, **PARAMS)
    if damage is not None:
        damage(model)
    model_path = work / f"{case}.pt"
    save_checkpoint(model_path, model.eval(), "small_cnn", dict(PARAMS, n_classes=3))
    return model_path


def _heatmaps(work, case, model_path, kind="none", level=0.0):
    hm = work / f"{case}_{kind}.h5"
    compute_heatmaps(work / "shapes.h5", model_path, hm, HeatmapJob(
        perturbation=kind, level=level, methods=METHODS, target_layer="features.block4", split="test",
        class_source="pred", batch_size=4, dtype="float16", seed=0, device="cpu"))
    return hm


def _run(work, case):
    model_path = _checkpoint(work, case, DEGENERATE[case])
    out = {kind: _heatmaps(work, case, model_path, kind, level) for kind, level in (("none", 0.0), ("gaussian", 0.1))}
    table = work / f"{case}_metrics.parquet"
    compute_metrics(work / "shapes.h5", model_path, out["gaussian"], out["none"], table, MetricJob(
        metrics={n: metric_params(n, p, "prob") for n, p in METRICS.items()}, score="prob", memory_mb=64,
        perturbation="gaussian", level=0.1, split="test", seed=0, dataset="shapes", model=case, device="cpu",
        batch_size=4))
    return out, table


@pytest.fixture(scope="module")
def runs(dataset):
    return {case: _run(dataset, case) for case in DEGENERATE}


def _every_array(path):
    with h5py.File(path) as f:
        found = []
        f.visititems(lambda name, obj: found.append((name, obj[()])) if isinstance(obj, h5py.Dataset)
                     and obj.dtype.kind == "f" else None)
    return found


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_no_non_finite_value_is_written(runs, case):
    heatmaps, table = runs[case]
    for path in heatmaps.values():
        arrays = _every_array(path)
        assert {name.split("/")[0] for name, _ in arrays} >= {"raw", "scores"}  # maps: from /raw (cam.store)
        for name, data in arrays:
            assert np.isfinite(data).all(), f"{path.name}:{name}"
        for method, maps in read_heatmaps(path).maps.items():  # rebuilt on read: finite too
            assert np.isfinite(maps).all(), f"{path.name}:maps/{method}"
    metrics = pd.read_parquet(table)
    # hd95 has no row where a thresholded map is empty; responsiveness none where no prediction flips
    assert set(metrics.metric) >= set(METRICS) - {"hd95", "responsiveness"}
    assert np.isfinite(metrics["value"]).all()


def test_degenerate_maps_are_flagged_in_the_files_and_tables(runs, dataset):
    heatmaps, table = runs["constant_activations"]
    hm = read_heatmaps(heatmaps["none"])
    # Constant activations: every method's map is constant (a shift of the same constant), flagged
    # and stored as zeros, never as 0/0.
    for method in ("gradcam", "xgradcam", "hirescam", "layercam", "eigencam", "cam"):
        assert (hm.flags[method] & FLAG_CONSTANT).all(), method
        assert (hm.maps[method] == 0).all(), method
    with h5py.File(heatmaps["none"]) as f:
        assert f["raw/gradcam"].attrs["n_constant"] == len(hm.ids)
    metrics = pd.read_parquet(table)
    assert metrics["map_flags"].dtype == np.uint8
    assert (metrics.loc[metrics.method == "gradcam", "map_flags"] & FLAG_CONSTANT).all()
    summary = aggregate_metrics([table], dataset / "summary.csv", dataset / "boxes.parquet", n_boot=50, seed=0)
    row = summary[(summary.method == "gradcam") & (summary.metric == "sparseness")].iloc[0]
    assert row["n_degenerate"] == row["n"] > 0

    zero, _ = runs["zero_gradients"]
    flags = read_heatmaps(zero["none"]).flags
    assert all((flags[m] & FLAG_CONSTANT).all() for m in ("gradcam", "gradcampp", "xgradcam", "hirescam"))


def test_a_healthy_model_has_no_flags(dataset):
    """The same network undamaged: no method's map is flagged, and the stored signed maps agree
    (none is constant after the ReLU, none has a non-finite value)."""
    hm = read_heatmaps(_heatmaps(dataset, "healthy", _checkpoint(dataset, "healthy")), raw=True)
    assert set(hm.flags) == set(METHODS)
    for method in METHODS:
        raw = np.asarray(hm.raw[method], dtype=np.float64).reshape(len(hm.ids), -1)
        assert np.isfinite(raw).all() and (raw.clip(0).max(1) > raw.clip(0).min(1)).all(), method
        assert not hm.flags[method].any(), method


def test_activation_only_methods_keep_their_maps_on_a_saturated_model(runs):
    """The saturated model still has spatial structure: activation-only methods give real maps."""
    heatmaps, table = runs["saturated_softmax"]
    flags = read_heatmaps(heatmaps["none"]).flags
    assert not flags["eigencam"].any() and not flags["cam"].any()
    metrics = pd.read_parquet(table)
    assert (metrics.loc[metrics.method == "eigencam", "map_flags"] == 0).all()


def test_nan_and_inf_in_a_signed_map_are_flagged_and_never_stored(tmp_path):
    signed = torch.tensor([[[1.0, float("nan")], [0.5, 0.0]], [[float("inf"), 1.0], [0.0, 0.0]],
                           [[2.0, 2.0], [2.0, 2.0]], [[0.0, 1.0], [2.0, 3.0]]])
    maps, flags = postprocess(signed, (4, 4))
    assert flags.tolist() == [FLAG_NONFINITE, FLAG_NONFINITE, FLAG_CONSTANT, 0]
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1

    from cambench.engine import CamResult
    result = CamResult({"m": maps}, {"m": signed}, {"m": flags}, torch.zeros(4, 2), torch.zeros(4).long(),
                       torch.tensor([1.0, 3.0, 0.0, 2.0]), weights={"m": torch.full((4, 3), float("nan"))})
    path = tmp_path / "h.h5"
    ids = np.array(["a", "b", "c", "d"])
    with HeatmapWriter(path, ids, np.zeros(4), {"m": {}}, dtype="float16") as w:
        w.write(0, result)
    for name, data in _every_array(path):
        assert np.isfinite(data).all(), name
    with h5py.File(path) as f:
        assert f["heatmaps/m"].attrs["n_nonfinite"] == 2 and f["heatmaps/m"].attrs["n_constant"] == 1
        assert json.loads(f.attrs["methods"]) == {"m": {}}

    # A non-finite score is a broken model, not a degenerate map: a clear error, and no file.
    result.scores[1] = float("inf")
    broken = tmp_path / "broken.h5"
    message = r"broken.h5: the model gave non-finite target scores for images \['b'\]"
    with pytest.raises(FloatingPointError, match=message):
        with HeatmapWriter(broken, ids, np.zeros(4), {"m": {}}) as w:
            w.write(0, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.h5"]
