"""The heatmap HDF5 layout (one file per dataset × model × perturbation × level):

    /ids            (N,) str          image ids, in dataset order
    /labels         (N,) int64        ground-truth class
    /predictions    (N,) int64        argmax of the logits on the (perturbed) image
    /targets        (N,) int64        class each heatmap explains (-1: a callable target)
    /scores         (N,) float32      the target score (logit) the gradients were taken of
    /label_rank     (N,) int64        1 + the classes whose logit is strictly above the label's
                                      (1: the label is the top-1 prediction); absent in older files
    /heatmaps/<m>   (N, *S) f16|f32   post-processed map in [0, 1] at input resolution (store 'input', or a
                                      map that is not rebuilt from /raw, see below); chunked one image
                                      per chunk, gzip; attrs: params (JSON), n_constant, n_nonfinite,
                                      n_nonpositive_score (images per flag bit)
    /raw/<m>        (N, *s) float32   signed, un-normalised map at feature resolution (input resolution
                                      for maps built there: MetaCAM, AME-CAM, Score-CAM 'official');
                                      gzip + shuffle, several images per chunk; attrs: params, the flag counts,
                                      and for a map rebuilt on read: rebuild ('postprocess'),
                                      scaling ('minmax' | 'max'), size (JSON, input spatial size),
                                      dtype (the map's storage type, cam.dtype)
    /weights/<m>    (N, K) float32    channel weights, for methods whose map is sum_k w_k A^k (the axioms)
    /flags/<m>      (N,) uint8        bit 1: constant map (stored as zeros), bit 2: NaN/Inf replaced,
                                      bit 4: Ablation-CAM's target score <= 0 (engine.FLAG_*)
    attrs: provenance (JSON), dataset, model, perturbation, level, seed, target_layer,
           class_source, methods (JSON), store ('feature' | 'input', cam.store)

Files are written to a temporary name and renamed when complete.

Storage (cam.store). Every map the engine makes is ``engine.postprocess(raw, size, scaling)`` of its
signed map, whatever the method (fused layers, ensembles and maps built at input resolution
included: the method returns the signed map, the engine post-processes it). With store 'feature'
(the default) the writer therefore keeps only /raw for such a method and :func:`read_heatmaps`
rebuilds the input-resolution map with that same function (batched torch on CPU) and casts it
through the file's dtype as the writer would: a file written with 'feature' and one written with
'input' read back bit-identical maps when the maps were computed on CPU. On a GPU, the rebuilt
map is the CPU's post-processing of the same raw map, which can differ from the GPU's in the last
bit of a few pixels (the file's maps are then the CPU ones, consistently for every reader). At
224 px a float16 map is 98 KiB and a ResNet 7 x 7 raw map 196 B. The writer checks on every
batch that the maps it was given are that function of their raw maps (on their own device) and
keeps /heatmaps for a method where they are not (a hand-made CamResult, a method unknown to the
engine, raw maps not in float32); a later batch that breaks the rule is an error.

/raw stays float32 whatever cam.dtype: the rebuilt maps must equal the engine's, which it computed
from the float32 signed map, and the metrics that read the signed map (the axioms' completeness
and conservation, metrics/axioms.py) must give the same numbers from either store.

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
import torch
from torch import Tensor

from .engine import FLAG_COUNTS, METHODS, SCALINGS, CamResult, method_of, postprocess, scaling_of
from .utils import atomic_path

STR = h5py.string_dtype()
DTYPES = {"float16": np.float16, "float32": np.float32}
STORES = ("feature", "input")  # cam.store
REBUILD = "postprocess"        # /raw/<m> attr 'rebuild': the map is engine.postprocess(raw, size, scaling)
RAW_CHUNK_BYTES = 64 * 2**10   # /raw chunks of several images: one 196 B map per chunk costs ~70 B of index
REBUILD_BYTES = 64 * 2**20     # float32 maps rebuilt per batch on read (bounds the intermediates)


def map_bytes(input_shape: tuple, feature_shape: tuple, dtype: str = "float16", store: str = "feature",
              channels: int = 0) -> float:
    """Bytes per map (one image, one method) in a heatmap file, uncompressed (gzip saves little on
    the float32 raw maps and up to about half on float16 maps; measured sizes in BENCHMARKS.md).

    The float32 /raw map of ``feature_shape``, the uint8 flag, ``channels`` float32 channel weights
    (methods that return weights, 0 for the others) and, with store 'input', the ``dtype`` map of
    ``input_shape``. Shapes are spatial only, e.g. (224, 224) and (7, 7); a method whose signed map
    is at input resolution (MetaCAM, AME-CAM, Score-CAM 'official') has feature_shape = input_shape.
    """
    if dtype not in DTYPES:
        raise ValueError(f"heatmap dtype (cam.dtype) must be one of {sorted(DTYPES)}, got {dtype!r}")
    if store not in STORES:
        raise ValueError(f"heatmap store (cam.store) must be one of {list(STORES)}, got {store!r}")
    size = float(np.prod(feature_shape)) * 4 + 1 + 4 * channels
    if store == "input":
        size += float(np.prod(input_shape)) * np.dtype(DTYPES[dtype]).itemsize
    return size


def _finite(t) -> np.ndarray:
    return np.nan_to_num(t.float().cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)


def label_ranks(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) int64: 1 + the number of classes whose logit is strictly greater than the label's, so
    ties share the better rank (top-5 = rank <= 5, Grad-CAM's top-5 errors, docs/papers.md §1)."""
    return 1 + (logits > logits.gather(1, labels[:, None])).sum(dim=1)


class HeatmapWriter:
    """Fill a heatmap file batch by batch; the file appears only when the writer closes cleanly.

    ``store`` 'feature' keeps only /raw for maps that :func:`read_heatmaps` can rebuild (module
    docstring); 'input' also stores every input-resolution map.
    """

    def __init__(self, path: str | Path, ids: np.ndarray, labels: np.ndarray, params: dict[str, dict],
                 dtype: str = "float16", attrs: dict | None = None, store: str = "feature"):
        if dtype not in DTYPES:
            raise ValueError(f"heatmap dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if store not in STORES:
            raise ValueError(f"heatmap store (cam.store) must be one of {list(STORES)}, got {store!r}")
        self.n, self.dtype, self.params, self.path = len(ids), DTYPES[dtype], params, Path(path)
        self.store = store
        self.rebuilt: dict[str, str] = {}        # method -> scaling, for maps rebuilt from /raw on read
        self._sets: dict[str, h5py.Dataset] = {}  # open handles keep each chunk cache between batches
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self.f = self._stack.enter_context(h5py.File(tmp, "w"))
        self.f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STR)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.f.create_dataset("labels", data=self.labels)
        for name, dt in (("predictions", np.int64), ("targets", np.int64), ("scores", np.float32),
                         ("label_rank", np.int64)):
            self.f.create_dataset(name, shape=(self.n,), dtype=dt)
        for key, value in (attrs or {}).items():
            self.f.attrs[key] = value
        self.f.attrs["methods"] = json.dumps(params, sort_keys=True)
        self.f.attrs["store"] = store
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
        labels = torch.from_numpy(self.labels[start:stop]).to(result.logits.device)
        if ((labels < 0) | (labels >= result.logits.shape[1])).any():
            raise ValueError(f"{self.path}: a label outside 0..{result.logits.shape[1] - 1} cannot index the model's "
                             f"{result.logits.shape[1]} logits (expected class indices in the model's output order)")
        self.f["label_rank"][start:stop] = label_ranks(result.logits, labels).cpu().numpy()
        for method, maps in result.maps.items():
            raw = result.raw[method]
            if f"flags/{method}" not in self.f:
                self._create(method, maps, raw)
            if method not in self.rebuilt:
                self._sets[f"heatmaps/{method}"][start:stop] = maps.cpu().numpy().astype(self.dtype)
            elif not _rebuilds(raw, maps, self.rebuilt[method]):
                raise ValueError(f"{self.path}: the maps of method '{method}' for images [{start}, {stop}) are not "
                                 f"engine.postprocess of their raw maps, unlike the first batch's, so they cannot "
                                 f"be rebuilt on read; write this file with store 'input' (cam.store)")
            # The signed map and weights as computed, but never NaN/Inf on disk (the flag records it).
            self._sets[f"raw/{method}"][start:stop] = _finite(raw)
            self.f[f"flags/{method}"][start:stop] = result.flags[method].cpu().numpy()
            if method in result.weights:
                w = _finite(result.weights[method])
                if f"weights/{method}" not in self.f:
                    self.f.create_dataset(f"weights/{method}", shape=(self.n,) + w.shape[1:], dtype=np.float32)
                self.f[f"weights/{method}"][start:stop] = w
        self.written += stop - start

    def _create(self, method: str, maps: Tensor, raw: Tensor) -> None:
        shape, raw_shape = tuple(maps.shape[1:]), tuple(raw.shape[1:])
        params = json.dumps(self.params[method], sort_keys=True)
        rows = max(1, min(self.n, RAW_CHUNK_BYTES // max(4 * int(np.prod(raw_shape)), 1)))
        r = self._sets[f"raw/{method}"] = self.f.create_dataset(
            f"raw/{method}", shape=(self.n,) + raw_shape, dtype=np.float32, chunks=(rows,) + raw_shape,
            compression="gzip", compression_opts=4, shuffle=True)  # byte shuffle: ~12% smaller floats
        r.attrs["params"] = params
        scaling = self._rebuild_scaling(method, maps, raw)
        if scaling is None:
            d = self._sets[f"heatmaps/{method}"] = self.f.create_dataset(
                f"heatmaps/{method}", shape=(self.n,) + shape, dtype=self.dtype, chunks=(1,) + shape,
                compression="gzip", compression_opts=4)
            d.attrs["params"] = params
        else:
            self.rebuilt[method] = scaling
            r.attrs.update({"rebuild": REBUILD, "scaling": scaling, "size": json.dumps(list(shape)),
                            "dtype": np.dtype(self.dtype).name})
        self.f.create_dataset(f"flags/{method}", shape=(self.n,), dtype=np.uint8)

    def _rebuild_scaling(self, method: str, maps: Tensor, raw: Tensor) -> str | None:
        """The scaling with which engine.postprocess turns ``raw`` into exactly ``maps`` (on their
        device), or None where the map is stored: store 'input', a method the engine does not know,
        raw maps not in float32 (stored exactly only in float32), or maps that are something else."""
        if self.store != "feature" or raw.dtype != torch.float32 or raw.ndim != maps.ndim:
            return None
        name, params = method_of(method, self.params.get(method) or {})
        if name not in METHODS:
            return None
        scaling = scaling_of(METHODS.get(name), params)
        return scaling if _rebuilds(raw, maps, scaling) else None

    def close(self) -> None:
        if self.written != self.n:
            raise RuntimeError(f"heatmap writer closed after {self.written} of {self.n} images")
        self.flag_counts = {}  # method -> {count attribute: images}, for the job's log
        for method in self.params:
            flags = self.f[f"flags/{method}"][:]
            counts = {key: int((flags & bit).astype(bool).sum()) for bit, key in FLAG_COUNTS.items()}
            for group in ("heatmaps", "raw"):
                if f"{group}/{method}" in self.f:
                    self.f[f"{group}/{method}"].attrs.update(counts)
            self.flag_counts[method] = counts
        self._sets.clear()
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self._sets.clear()
            self._stack.__exit__(exc_type, exc, tb)  # the temporary file is removed
        return False


def _rebuilds(raw: Tensor, maps: Tensor, scaling: str) -> bool:
    """Is ``maps`` exactly engine.postprocess of ``raw`` (NaN where it has NaN)?"""
    rebuilt = postprocess(raw.to(maps.device), maps.shape[1:], scaling)[0]
    return rebuilt.dtype == maps.dtype and rebuilt.shape == maps.shape and bool(
        torch.allclose(rebuilt, maps, rtol=0, atol=0, equal_nan=True))


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
    label_rank: np.ndarray | None = None                 # (N,) rank of the label among the logits (1 = top-1)


def read_heatmaps(path: str | Path, methods: list[str] | None = None, raw: bool = False,
                  rows: slice | np.ndarray | list[int] | None = None) -> Heatmaps:
    """The heatmap file's arrays; ``raw`` also reads the signed maps and the channel weights.

    ``.maps`` are at input resolution whatever the file's store: maps kept at feature resolution are
    rebuilt here (module docstring). ``rows`` reads only those images (a slice, or indices in any
    order, repeats allowed), e.g. a gallery's few; every per-image array follows them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heatmap file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable heatmap file ({err})") from None
    with f:
        missing = [k for k in ("ids", "labels", "predictions", "targets") if k not in f]
        if "heatmaps" not in f and "raw" not in f:
            missing.append("heatmaps")
        if missing:
            raise ValueError(f"{path}: not a cambench heatmap file, missing {missing}")
        present = sorted(set(f.get("heatmaps", {})) | {m for m, d in f.get("raw", {}).items() if "rebuild" in d.attrs})
        names = methods or present
        absent = [m for m in names if m not in present]
        if absent:
            raise ValueError(f"{path}: no heatmaps for {absent}; present: {present}")
        missing = [f"flags/{m}" for m in names if f"flags/{m}" not in f]
        if missing:
            raise ValueError(f"{path}: not a cambench heatmap file, missing {missing}")
        select = _row_selection(rows, len(f["ids"]), path)
        try:
            return _read_heatmaps(f, names, raw, select)
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


def _row_selection(rows, n: int, path: Path):
    """``rows`` -> a function reading those rows of a dataset (h5py wants increasing unique indices)."""
    if rows is None or (isinstance(rows, slice) and rows.step in (None, 1)):
        index = slice(None) if rows is None else rows
        return lambda d: d[index]
    idx = np.arange(n)[rows] if isinstance(rows, slice) else np.asarray(rows)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{path}: rows must be a slice or a 1-D list of image indices, got {rows!r}")
    if ((idx < -n) | (idx >= n)).any():
        raise ValueError(f"{path}: rows {sorted(set(idx[(idx < -n) | (idx >= n)].tolist()))[:5]} are outside "
                         f"the file's {n} images")
    unique, inverse = np.unique(np.where(idx < 0, idx + n, idx), return_inverse=True)
    if unique.size == 0:
        return lambda d: d[0:0]
    return lambda d: d[unique][inverse]


def _rebuilt(d: h5py.Dataset, raw: np.ndarray) -> np.ndarray:
    """The input-resolution maps of raw maps ``raw`` read from ``d`` (/raw/<m>): engine.postprocess
    on CPU in batches, cast through the file's map dtype exactly as the writer stores a map."""
    attrs = dict(d.attrs)
    if attrs.get("rebuild") != REBUILD or attrs.get("scaling") not in SCALINGS or attrs.get("dtype") not in DTYPES:
        raise ValueError(f"{d.file.filename}: {d.name} has rebuild attributes rebuild={attrs.get('rebuild')!r}, "
                         f"scaling={attrs.get('scaling')!r}, dtype={attrs.get('dtype')!r}; expected "
                         f"'{REBUILD}', one of {SCALINGS} and one of {sorted(DTYPES)}")
    size = tuple(json.loads(attrs["size"]))
    out = np.empty((len(raw),) + size, dtype=np.float32)
    step = max(1, REBUILD_BYTES // (4 * int(np.prod(size))))
    for i in range(0, len(raw), step):
        maps, _ = postprocess(torch.from_numpy(raw[i:i + step]), size, attrs["scaling"])
        out[i:i + step] = maps.numpy().astype(DTYPES[attrs["dtype"]])
    return out


def _read_heatmaps(f: h5py.File, names: list[str], raw: bool, take=lambda d: d[:]) -> Heatmaps:
    _check_sources(f, Path(f.filename))
    signed = {m: take(f[f"raw/{m}"]) for m in names
              if f"raw/{m}" in f and (raw or f"heatmaps/{m}" not in f)}  # read once, for both uses
    return Heatmaps(
        ids=take(f["ids"].asstr()), labels=take(f["labels"]), predictions=take(f["predictions"]),
        targets=take(f["targets"]),
        maps={m: take(f[f"heatmaps/{m}"]).astype(np.float32) if f"heatmaps/{m}" in f
              else _rebuilt(f[f"raw/{m}"], signed[m]) for m in names},
        flags={m: take(f[f"flags/{m}"]) for m in names},
        attrs={k: f.attrs[k] for k in f.attrs},
        scores=take(f["scores"]) if "scores" in f else None,
        label_rank=take(f["label_rank"]) if "label_rank" in f else None,
        raw=signed if raw else None,
        weights={m: take(f[f"weights/{m}"]) for m in names if f"weights/{m}" in f} if raw else None,
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
    dsid = h5py.h5d.create(parent.id, name=name.rsplit("/", 1)[-1].encode(),
                           tid=h5py.h5t.py_create(layout.dtype, logical=1), space=space, dcpl=dcpl)
    return h5py.Dataset(dsid)


SHARD_COPIED = ("ids", "labels", "predictions", "targets", "scores", "label_rank")  # small per-image columns
SHARD_VIRTUAL = ("heatmaps", "raw", "weights")                       # the maps: not copied
REBUILD_ATTRS = ("rebuild", "scaling", "size", "dtype")               # /raw/<m>: how its map is rebuilt


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
            for key in ("perturbation", "level", "methods", "target_layer", "class_source", "store"):
                if f.attrs.get(key) != first.attrs.get(key):
                    raise ValueError(f"{path}: attribute '{key}' {f.attrs.get(key)!r} differs from "
                                     f"{shards[0]}'s {first.attrs.get(key)!r}")
            for group in SHARD_VIRTUAL:  # the same maps kept the same way (store, rebuild attributes)
                if sorted(f.get(group, {})) != sorted(first.get(group, {})):
                    raise ValueError(f"{path}: /{group} holds {sorted(f.get(group, {}))}, {shards[0]}'s holds "
                                     f"{sorted(first.get(group, {}))}")
                for method in f.get(group, {}):
                    ours, theirs = ({k: g[f"{group}/{method}"].attrs.get(k) for k in REBUILD_ATTRS}
                                    for g in (f, first))
                    if ours != theirs:
                        raise ValueError(f"{path}: {group}/{method} is rebuilt with {ours}, "
                                         f"in {shards[0]} with {theirs}")
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
                    for key in FLAG_COUNTS.values():
                        if key in d.attrs:
                            v.attrs[key] = int(sum(int(f[f"{group}/{method}"].attrs.get(key, 0)) for f in handles))
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
