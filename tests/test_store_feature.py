"""cam.store 'feature': heatmap files keep the raw feature-resolution maps and rebuild the
input-resolution maps on read; 'input' stores them too. Either way the maps read back are the same."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import cambench
from cambench.data import generate_shapes, prepare
from cambench.engine import CamResult
from cambench.jobs import HeatmapJob, MetricJob
from cambench.models import build_model, save_checkpoint
from cambench.pipeline import compute_heatmaps, compute_metrics, metric_params
from cambench.store import HeatmapWriter, join_heatmaps, map_bytes, read_heatmaps

STORES = ("feature", "input")
# Maps up-sampled from the target layer, with the engine's min-max or CF-CAM's own 'max' scaling,
# fused over two layers, and built at input resolution (MetaCAM, Score-CAM 'official').
SMALL_METHODS = {"gradcam": {}, "cfcam": {}, "layercam_ms": {"layers": ["features.block2"]},
                 "metacam": {"components": ["gradcam", "xgradcam"], "k": 20},
                 "score_official": {"method": "scorecam", "variant": "official"}}
RESNET_METHODS = {"gradcam": {}, "cfcam": {}, "layercam_ms": {"layers": ["net.layer3"]},
                  "metacam": {"components": ["gradcam", "xgradcam"], "k": 20}}
MODELS = {"small_cnn": ("features.block4", SMALL_METHODS), "resnet18": ("net.layer4", RESNET_METHODS)}


def _model(arch):
    torch.manual_seed(0)
    if arch == "small_cnn":
        return build_model("small_cnn", n_classes=5, widths=[8, 8, 16, 16]).eval()
    return build_model("resnet18", n_classes=10).eval()  # torchvision ResNet-18 behind Normalize, random weights


def _write(path, result, store, batches=(0, 3), ids=None, rows=None):
    """One heatmap file of ``result``, written in batches starting at ``batches``."""
    n = result.logits.shape[0]
    ids = np.array([f"img{i}" for i in range(n)]) if ids is None else ids
    attrs = {"provenance": json.dumps({"seed": 0}), "perturbation": "none", "level": 0.0,
             "rows": json.dumps(rows or [0, n])}
    with HeatmapWriter(path, ids, np.zeros(n, np.int64), result.params, "float16", attrs, store) as w:
        for start, stop in zip(batches, list(batches[1:]) + [n]):
            w.write(start, _rows(result, slice(start, stop)))
    return path


def _rows(r: CamResult, index) -> CamResult:
    pick = lambda d: {m: v[index] for m, v in d.items()}  # noqa: E731
    return CamResult(pick(r.maps), pick(r.raw), pick(r.flags), r.logits[index], r.targets[index],
                     r.scores[index], r.params, pick(r.weights))


@pytest.fixture(scope="module", params=sorted(MODELS))
def explained(request):
    layer, methods = MODELS[request.param]
    model = _model(request.param)
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return request.param, cambench.explain_many(model, images, methods, layer)


def test_both_stores_read_back_the_engines_maps_bit_identical(explained, tmp_path):
    arch, result = explained
    feature = read_heatmaps(_write(tmp_path / "feature.h5", result, "feature"), raw=True)
    stored = read_heatmaps(_write(tmp_path / "input.h5", result, "input"), raw=True)
    for m in result.maps:
        engine = result.maps[m].numpy().astype(np.float16).astype(np.float32)  # what 'input' stores
        assert feature.maps[m].shape == stored.maps[m].shape == (5, 64, 64), m
        assert np.array_equal(stored.maps[m], engine), m
        assert np.array_equal(feature.maps[m], engine), m
        assert np.array_equal(feature.raw[m], stored.raw[m]) and np.array_equal(feature.flags[m], stored.flags[m])
        assert feature.raw[m].dtype == np.float32  # raw stays float32 whatever cam.dtype
    assert set(feature.weights) == set(stored.weights) == {"gradcam"}  # channel-weight methods
    with h5py.File(tmp_path / "feature.h5") as f, h5py.File(tmp_path / "input.h5") as g:
        assert "heatmaps" not in f and f.attrs["store"] == "feature" and g.attrs["store"] == "input"
        assert sorted(g["heatmaps"]) == sorted(result.maps)
        assert f["raw/cfcam"].attrs["scaling"] == "max" and f["raw/gradcam"].attrs["scaling"] == "minmax"
        assert json.loads(f["raw/gradcam"].attrs["size"]) == [64, 64] and f["raw/gradcam"].attrs["dtype"] == "float16"
        assert f["raw/metacam"].shape == (5, 64, 64)  # built at input resolution: its raw map is too
        assert json.loads(f["raw/layercam_ms"].attrs["params"]) == RESNET_METHODS["layercam_ms"] \
            if arch == "resnet18" else SMALL_METHODS["layercam_ms"]
    # a few rows, in any order, repeats allowed: the same as the rows of the whole file
    part = read_heatmaps(tmp_path / "feature.h5", ["cfcam"], raw=True, rows=[4, 1, 1])
    assert list(part.ids) == ["img4", "img1", "img1"] and list(part.maps) == ["cfcam"]
    assert np.array_equal(part.maps["cfcam"], feature.maps["cfcam"][[4, 1, 1]])
    assert np.array_equal(part.raw["cfcam"], feature.raw["cfcam"][[4, 1, 1]])
    assert np.array_equal(read_heatmaps(tmp_path / "feature.h5", rows=slice(1, 3)).maps["gradcam"],
                          feature.maps["gradcam"][1:3])
    with pytest.raises(ValueError, match=r"feature.h5: rows \[5\] are outside the file's 5 images"):
        read_heatmaps(tmp_path / "feature.h5", rows=[0, 5])


def test_maps_that_are_not_the_engines_postprocessing_keep_their_own_dataset(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=5, widths=[8, 8, 16, 16]).eval()
    images = torch.rand(4, 3, 32, 32)
    result = cambench.explain_many(model, images, {"gradcam": {}, "eigencam": {}}, "features.block4")
    # A map that is something else than engine.postprocess of its raw map is stored as given.
    result.maps["eigencam"] = result.maps["eigencam"] ** 2
    read = read_heatmaps(_write(tmp_path / "mixed.h5", result, "feature"))
    with h5py.File(tmp_path / "mixed.h5") as f:
        assert sorted(f["heatmaps"]) == ["eigencam"] and "rebuild" not in f["raw/eigencam"].attrs
        assert f["raw/gradcam"].attrs["rebuild"] == "postprocess"
    for m in ("gradcam", "eigencam"):
        assert np.array_equal(read.maps[m], result.maps[m].numpy().astype(np.float16).astype(np.float32))
    # ... but a method rebuilt from its first batch must stay rebuildable: a later batch that is not is an error.
    late = _rows(result, slice(None))
    late.maps["gradcam"] = torch.cat([result.maps["gradcam"][:3], result.maps["gradcam"][3:] ** 2])
    with pytest.raises(ValueError, match=r"late.h5: the maps of method 'gradcam' for images \[3, 4\) are not "
                                         r"engine.postprocess of their raw maps.*store 'input'"):
        _write(tmp_path / "late.h5", late, "feature")
    assert not (tmp_path / "late.h5").exists()
    # Raw maps in float64 cannot be stored exactly in float32: their maps are stored.
    double = cambench.explain_many(model.double(), images.double(), {"gradcam": {}}, "features.block4")
    with h5py.File(_write(tmp_path / "double.h5", double, "feature")) as f:
        assert list(f["heatmaps"]) == ["gradcam"]
    # Damaged rebuild attributes are a clear error naming the file and the dataset.
    _write(tmp_path / "bad.h5", result, "feature")
    with h5py.File(tmp_path / "bad.h5", "r+") as f:
        f["raw/gradcam"].attrs["scaling"] = "median"
    with pytest.raises(ValueError, match=r"bad.h5: /raw/gradcam has rebuild attributes .*scaling='median'"):
        read_heatmaps(tmp_path / "bad.h5")


@pytest.mark.parametrize("store", STORES)
def test_shards_join_for_both_stores(explained, tmp_path, store):
    result = _rows(explained[1], slice(None))
    result.flags["gradcam"] = torch.tensor([0, 1, 0, 1, 1], dtype=torch.uint8)  # constant maps in two shards
    whole = read_heatmaps(_write(tmp_path / "whole.h5", result, store), raw=True)
    (tmp_path / "lvl").mkdir()
    shards = []
    for k, (start, stop) in enumerate([(0, 2), (2, 4), (4, 5)]):
        part = _rows(result, slice(start, stop))
        shards.append(_write(tmp_path / "lvl" / f"shard-{k}.h5", part, store, batches=(0,),
                             ids=np.array([f"img{i}" for i in range(start, stop)]), rows=[start, stop]))
    assert join_heatmaps(shards, tmp_path / "lvl.h5") == {"images": 5, "shards": 3}
    joined = read_heatmaps(tmp_path / "lvl.h5", raw=True)
    for m in result.maps:
        assert np.array_equal(joined.maps[m], whole.maps[m]) and np.array_equal(joined.raw[m], whole.raw[m]), m
    part = read_heatmaps(tmp_path / "lvl.h5", rows=[4, 0])  # rows across shards of the virtual datasets
    assert np.array_equal(part.maps["gradcam"], whole.maps["gradcam"][[4, 0]])
    with h5py.File(tmp_path / "lvl.h5") as f:
        assert f["raw/gradcam"].is_virtual and f.attrs["store"] == store
        assert ("heatmaps" in f) == (store == "input")
        assert f["raw/gradcam"].attrs["rebuild" if store == "feature" else "params"]
        assert f["raw/gradcam"].attrs["n_constant"] == 3  # the shards' counts summed
    # shards written with different stores are not joined
    other = "input" if store == "feature" else "feature"
    _write(shards[1], _rows(result, slice(2, 4)), other, batches=(0,),
           ids=np.array(["img2", "img3"]), rows=[2, 4])
    with pytest.raises(ValueError, match=rf"shard-1.h5: attribute 'store' '{other}' differs"):
        join_heatmaps(shards, tmp_path / "mixed.h5")
    # a missing shard is an error in either store (its raw maps would read as NaN)
    shards[2].unlink()
    with pytest.raises(ValueError, match=r"lvl.h5: shard file\(s\) \['lvl/shard-2.h5'\] .* missing"):
        read_heatmaps(tmp_path / "lvl.h5")


def test_the_feature_store_is_much_smaller(tmp_path):
    """64 px inputs: ResNet-18's 2 x 2 raw maps and small_cnn's 16 x 16 against 64 x 64 float16 maps."""
    per_map = {}
    for arch, (layer, _) in MODELS.items():
        images = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        result = cambench.explain_many(_model(arch), images, {"eigencam": {}, "layercam": {}}, layer)
        for store in STORES:
            with h5py.File(_write(tmp_path / f"{arch}-{store}.h5", result, store, batches=(0, 16))) as f:
                per_map[arch, store] = sum(d.id.get_storage_size() for g in ("heatmaps", "raw", "flags")
                                           for d in f.get(g, {}).values()) / (32 * 2)
    ratio = {arch: per_map[arch, "input"] / per_map[arch, "feature"] for arch in MODELS}
    # measured on disk (gzip): ResNet-18 15 B against 2.2 KB per map (x149); small_cnn 0.87 KB against 6.8 KB (x7.9)
    assert ratio["resnet18"] > 50 and ratio["small_cnn"] > 4, (ratio, per_map)
    files = {store: (tmp_path / f"resnet18-{store}.h5").stat().st_size for store in STORES}
    assert files["input"] > 5 * files["feature"], files  # the whole file (x8), its fixed overhead included
    # the cost plan's per-map bytes: raw float32 + the uint8 flag (+ the float16 map with 'input')
    assert map_bytes((224, 224), (7, 7), "float16", "feature") == 7 * 7 * 4 + 1
    assert map_bytes((224, 224), (7, 7), "float16", "input") == 7 * 7 * 4 + 1 + 224 * 224 * 2
    assert map_bytes((64, 64, 64), (8, 8, 8), "float32", "input", channels=512) == 8**3 * 4 + 1 + 512 * 4 + 64**3 * 4
    with pytest.raises(ValueError, match=r"cam.store.*'feature', 'input'.*got 'disk'"):
        map_bytes((224, 224), (7, 7), "float16", "disk")


def test_metrics_are_identical_from_either_store(tmp_path):
    """The pipeline end to end: compute_heatmaps with each store, then compute_metrics (one metric
    reads the signed raw map: conservation_residual) gives identical tables."""
    generate_shapes(tmp_path / "data", tmp_path / "masks", {"train": 1, "test": 3}, classes=["disk", "cross"],
                    image_size=32, clutter=2, seed=3)
    prepare("imagefolder", tmp_path / "data", tmp_path / "shapes.h5", mask_root=tmp_path / "masks")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "m.pt", build_model("small_cnn", n_classes=2, widths=[4, 8, 8, 8]).eval(),
                    "small_cnn", {"n_classes": 2, "widths": [4, 8, 8, 8]})
    methods = {"gradcam": {}, "cfcam": {}, "metacam": {"components": ["gradcam", "xgradcam"], "k": 20}}
    metrics = {"deletion_auc": {"steps": 4}, "pointing_game": {}, "sparseness": {}, "conservation_residual": {}}
    tables = {}
    for store in STORES:
        hm = tmp_path / f"{store}.h5"
        compute_heatmaps(tmp_path / "shapes.h5", tmp_path / "m.pt", hm, HeatmapJob(
            perturbation="none", level=0.0, methods=methods, target_layer="features.block4", split="test",
            class_source="pred", batch_size=4, dtype="float16", seed=0, device="cpu", store=store))
        with h5py.File(hm) as f:
            assert ("heatmaps" in f) == (store == "input")
        tables[store] = compute_metrics(
            tmp_path / "shapes.h5", tmp_path / "m.pt", hm, hm, tmp_path / f"{store}.parquet", MetricJob(
                metrics={n: metric_params(n, p, "prob") for n, p in metrics.items()}, score="prob", memory_mb=64,
                perturbation="none", level=0.0, split="test", seed=0, dataset="shapes", model="m", device="cpu",
                batch_size=4))
    feature, stored = (tables[s].reset_index(drop=True) for s in STORES)
    assert set(feature.metric) == set(metrics) and len(feature) > 0
    pd.testing.assert_frame_equal(feature, stored)
