"""The heatmap HDF5 layout (one file per dataset × model × perturbation × level):

    /ids            (N,) str          image ids, in dataset order
    /labels         (N,) int64        ground-truth class
    /predictions    (N,) int64        argmax of the logits on the (perturbed) image
    /targets        (N,) int64        class each heatmap explains (-1: a callable target)
    /scores         (N,) float32      the target score (logit) the gradients were taken of
    /heatmaps/<m>   (N, *S) f16|f32   post-processed map in [0, 1] at input resolution;
                                      chunked one image per chunk, gzip; attrs: params (JSON),
                                      n_constant, n_nonfinite, n_nonpositive_score (images per flag bit)
    /raw/<m>        (N, *s) float32   signed, un-normalised map at feature resolution
    /weights/<m>    (N, K) float32    channel weights, for methods whose map is sum_k w_k A^k (the axioms)
    /flags/<m>      (N,) uint8        bit 1: constant map (stored as zeros), bit 2: NaN/Inf replaced,
                                      bit 4: Ablation-CAM's target score <= 0 (engine.FLAG_*)
    attrs: provenance (JSON), dataset, model, perturbation, level, seed, target_layer,
           class_source, methods (JSON)

Files are written to a temporary name and renamed when complete.

A sharded run writes one such file per shard (``<perturbation>~<level>/shard-<k>.h5``, attrs
``rows`` = [start, stop) of the split) and joins them with :func:`join_heatmaps` into the file
above without copying the maps: /heatmaps, /raw and /weights become HDF5 virtual datasets over the
shard files (paths relative to the joined file); the small per-image columns are copied.
"""
from __future__ import annotations

import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .engine import FLAG_COUNTS, CamResult
from .utils import atomic_path

STR = h5py.string_dtype()
DTYPES = {"float16": np.float16, "float32": np.float32}


def _finite(t) -> np.ndarray:
    return np.nan_to_num(t.float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)


class HeatmapWriter:
    """Fill a heatmap file batch by batch; the file appears only when the writer closes cleanly."""

    def __init__(self, path: str | Path, ids: np.ndarray, labels: np.ndarray, params: dict[str, dict],
                 dtype: str = "float16", attrs: dict | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"heatmap dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.n, self.dtype, self.params, self.path = len(ids), DTYPES[dtype], params, Path(path)
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self.f = self._stack.enter_context(h5py.File(tmp, "w"))
        self.f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STR)
        self.f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        for name, dt in (("predictions", np.int64), ("targets", np.int64), ("scores", np.float32)):
            self.f.create_dataset(name, shape=(self.n,), dtype=dt)
        for key, value in (attrs or {}).items():
            self.f.attrs[key] = value
        self.f.attrs["methods"] = json.dumps(params, sort_keys=True)
        self.written = 0

    def write(self, start: int, result: CamResult) -> None:
        stop = start + result.logits.shape[0]
        self.f["predictions"][start:stop] = result.predictions.cpu().numpy()
        self.f["targets"][start:stop] = result.targets.cpu().numpy()
        scores = result.scores.float().cpu().numpy()
        if not np.isfinite(scores).all():  # a broken model, not a degenerate map: stop, write nothing
            bad = self.f["ids"].asstr()[start:stop][~np.isfinite(scores)]
            raise FloatingPointError(f"{self.path}: the model gave non-finite target scores for images "
                                     f"{list(bad[:5])}; check the checkpoint and the input normalisation")
        self.f["scores"][start:stop] = scores
        for method, maps in result.maps.items():
            if f"heatmaps/{method}" not in self.f:
                self._create(method, tuple(maps.shape[1:]), tuple(result.raw[method].shape[1:]))
            self.f[f"heatmaps/{method}"][start:stop] = maps.cpu().numpy().astype(self.dtype)
            # The signed map and weights as computed, but never NaN/Inf on disk (the flag records it).
            self.f[f"raw/{method}"][start:stop] = _finite(result.raw[method])
            self.f[f"flags/{method}"][start:stop] = result.flags[method].cpu().numpy()
            if method in result.weights:
                w = _finite(result.weights[method])
                if f"weights/{method}" not in self.f:
                    self.f.create_dataset(f"weights/{method}", shape=(self.n,) + w.shape[1:], dtype=np.float32)
                self.f[f"weights/{method}"][start:stop] = w
        self.written += stop - start

    def _create(self, method: str, shape: tuple, raw_shape: tuple) -> None:
        d = self.f.create_dataset(f"heatmaps/{method}", shape=(self.n,) + shape, dtype=self.dtype,
                                  chunks=(1,) + shape, compression="gzip", compression_opts=4)
        d.attrs["params"] = json.dumps(self.params[method], sort_keys=True)
        self.f.create_dataset(f"raw/{method}", shape=(self.n,) + raw_shape, dtype=np.float32,
                              chunks=(1,) + raw_shape, compression="gzip", compression_opts=4)
        self.f.create_dataset(f"flags/{method}", shape=(self.n,), dtype=np.uint8)

    def close(self) -> None:
        if self.written != self.n:
            raise RuntimeError(f"heatmap writer closed after {self.written} of {self.n} images")
        self.flag_counts = {}  # method -> {count attribute: images}, for the job's log
        for method in self.params:
            flags = self.f[f"flags/{method}"][:]
            counts = {key: int((flags & bit).astype(bool).sum()) for bit, key in FLAG_COUNTS.items()}
            self.f[f"heatmaps/{method}"].attrs.update(counts)
            self.flag_counts[method] = counts
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._stack.__exit__(exc_type, exc, tb)  # the temporary file is removed
        return False


@dataclass
class Heatmaps:
    ids: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray
    maps: dict[str, np.ndarray]
    flags: dict[str, np.ndarray]
    attrs: dict
    scores: np.ndarray | None = None                     # (N,) target logits
    raw: dict[str, np.ndarray] | None = None              # method -> signed map at feature resolution
    weights: dict[str, np.ndarray] | None = None          # method -> (N, K) channel weights, where a method has them


def read_heatmaps(path: str | Path, methods: list[str] | None = None, raw: bool = False) -> Heatmaps:
    """The heatmap file's arrays; ``raw`` also reads the signed maps and the channel weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heatmap file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable heatmap file ({err})") from None
    with f:
        missing = [k for k in ("ids", "labels", "predictions", "targets", "heatmaps") if k not in f]
        if missing:
            raise ValueError(f"{path}: not a cambench heatmap file, missing {missing}")
        names = methods or sorted(f["heatmaps"])
        absent = [m for m in names if m not in f["heatmaps"]]
        if absent:
            raise ValueError(f"{path}: no heatmaps for {absent}; present: {sorted(f['heatmaps'])}")
        missing = [f"flags/{m}" for m in names if f"flags/{m}" not in f]
        if missing:
            raise ValueError(f"{path}: not a cambench heatmap file, missing {missing}")
        try:
            return _read_heatmaps(f, names, raw)
        except OSError as err:  # a damaged chunk or a dataset cut short
            raise ValueError(f"{path}: cannot read the heatmap file ({err}) (expected an intact heatmap HDF5; "
                             f"compute it again)") from None


def _check_sources(f: h5py.File, path: Path) -> None:
    """A virtual dataset reads a missing shard as its fill value; make that an error instead."""
    missing = set()
    for group in ("heatmaps", "raw", "weights"):
        for d in f.get(group, {}).values():
            if d.is_virtual:
                missing |= {s.file_name for s in d.virtual_sources()
                            if not (path.parent / s.file_name).is_file()}
    if missing:
        raise ValueError(f"{path}: shard file(s) {sorted(missing)} of this joined heatmap file are missing "
                         f"(expected beside it; rerun the workflow to recreate them)")


def _read_heatmaps(f: h5py.File, names: list[str], raw: bool) -> Heatmaps:
    _check_sources(f, Path(f.filename))
    return Heatmaps(
        ids=f["ids"].asstr()[:], labels=f["labels"][:], predictions=f["predictions"][:],
        targets=f["targets"][:],
        maps={m: f[f"heatmaps/{m}"][:].astype(np.float32) for m in names},
        flags={m: f[f"flags/{m}"][:] for m in names},
        attrs={k: f.attrs[k] for k in f.attrs},
        scores=f["scores"][:] if "scores" in f else None,
        raw={m: f[f"raw/{m}"][:] for m in names if f"raw/{m}" in f} if raw else None,
        weights={m: f[f"weights/{m}"][:] for m in names if f"weights/{m}" in f} if raw else None,
    )


def _virtual_dataset(group: h5py.Group, name: str, layout: h5py.VirtualLayout) -> h5py.Dataset:
    """``create_virtual_dataset`` without HDF5's object timestamps, so that joining the same shards
    twice gives the same bytes (h5py turns timestamps off for ordinary datasets, not for virtual
    ones). Missing sources read as NaN."""
    dcpl = layout._get_dcpl(group.file.filename)
    dcpl.set_fill_value(np.array([np.nan], dtype=layout.dtype))
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(layout.shape, layout.maxshape)
    parent = group.require_group(name.rsplit("/", 1)[0]) if "/" in name else group
    dsid = h5py.h5d.create(parent.id, name=name.rsplit("/", 1)[-1].encode(), tid=h5py.h5t.py_create(layout.dtype, logical=1),
                           space=space, dcpl=dcpl)
    return h5py.Dataset(dsid)


SHARD_COPIED = ("ids", "labels", "predictions", "targets", "scores")  # small per-image columns
SHARD_VIRTUAL = ("heatmaps", "raw", "weights")                       # the maps: not copied


def join_heatmaps(shards: list[str | Path], output: str | Path) -> dict:
    """Join per-shard heatmap files (in split order) into one heatmap file over the whole split.

    The maps stay in the shard files (virtual datasets, paths relative to ``output``); ids, labels,
    predictions, targets, scores and flags are copied. Checks that the shards tile the split
    without gaps or overlaps and agree on methods, shapes, dtypes and the (perturbation, level).
    """
    output = Path(output)
    shards = [Path(p) for p in shards]
    if not shards:
        raise ValueError(f"{output}: no shard files to join")
    handles = [h5py.File(p, "r") for p in shards]
    try:
        first = handles[0]
        expect_start = 0
        for path, f in zip(shards, handles):
            start, stop = json.loads(f.attrs["rows"])
            if start != expect_start:
                raise ValueError(f"{path}: shard rows [{start}, {stop}) do not follow the previous shard "
                                 f"(expected start {expect_start})")
            if len(f["ids"]) != stop - start:
                raise ValueError(f"{path}: {len(f['ids'])} images for rows [{start}, {stop})")
            for key in ("perturbation", "level", "methods", "target_layer", "class_source"):
                if f.attrs.get(key) != first.attrs.get(key):
                    raise ValueError(f"{path}: attribute '{key}' {f.attrs.get(key)!r} differs from "
                                     f"{shards[0]}'s {first.attrs.get(key)!r}")
            expect_start = stop
        n = expect_start
        offsets = [json.loads(f.attrs["rows"])[0] for f in handles]
        rels = [Path(os.path.relpath(p.resolve(), output.resolve().parent)).as_posix() for p in shards]
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            for key in SHARD_COPIED:
                if key in first:
                    out.create_dataset(key, data=np.concatenate([f[key][:] for f in handles]),
                                       dtype=first[key].dtype)
            for method in first["flags"]:
                out.create_dataset(f"flags/{method}", data=np.concatenate([f[f"flags/{method}"][:] for f in handles]))
            for group in SHARD_VIRTUAL:
                for method, d in first.get(group, {}).items():
                    layout = h5py.VirtualLayout(shape=(n,) + d.shape[1:], dtype=d.dtype)
                    for path, rel, f, start in zip(shards, rels, handles, offsets):
                        part = f[f"{group}/{method}"]
                        if part.shape[1:] != d.shape[1:] or part.dtype != d.dtype:
                            raise ValueError(f"{path}: {group}/{method} is {part.dtype} {part.shape[1:]}, "
                                             f"{shards[0]} has {d.dtype} {d.shape[1:]}")
                        layout[start:start + part.shape[0]] = h5py.VirtualSource(rel, part.name, shape=part.shape)
                    v = _virtual_dataset(out, f"{group}/{method}", layout)
                    for key, value in d.attrs.items():
                        v.attrs[key] = value
                    if group == "heatmaps":
                        for key in FLAG_COUNTS.values():
                            v.attrs[key] = int(sum(int(f[f"heatmaps/{method}"].attrs.get(key, 0)) for f in handles))
            for key, value in first.attrs.items():
                if key not in ("rows", "provenance"):
                    out.attrs[key] = value
            out.attrs["rows"] = json.dumps([0, n])
            # The shards' own provenance (config hash, commit, inputs' checksums) plus the shard list;
            # the shards are not hashed again here (at full scale they hold tens of GB).
            record = json.loads(first.attrs["provenance"])
            record["shards"] = [{"file": rel, "rows": json.loads(f.attrs["rows"])} for rel, f in zip(rels, handles)]
            out.attrs["provenance"] = json.dumps(record, sort_keys=True)
    finally:
        for f in handles:
            f.close()
    return {"images": n, "shards": len(shards)}
