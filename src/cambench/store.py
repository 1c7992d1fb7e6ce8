"""The heatmap HDF5 layout (one file per dataset × model × perturbation × level):

    /ids            (N,) str          image ids, in dataset order
    /labels         (N,) int64        ground-truth class
    /predictions    (N,) int64        argmax of the logits on the (perturbed) image
    /targets        (N,) int64        class each heatmap explains (-1: a callable target)
    /scores         (N,) float32      the target score (logit) the gradients were taken of
    /heatmaps/<m>   (N, *S) f16|f32   post-processed map in [0, 1] at input resolution;
                                      chunked one image per chunk, gzip; attrs: params (JSON),
                                      n_constant, n_nonfinite
    /raw/<m>        (N, *s) float32   signed, un-normalised map at feature resolution
    /weights/<m>    (N, K) float32    channel weights, for methods whose map is sum_k w_k A^k (the axioms)
    /flags/<m>      (N,) uint8        bit 1: constant map (stored as zeros), bit 2: NaN/Inf replaced
    attrs: provenance (JSON), dataset, model, perturbation, level, seed, target_layer,
           class_source, methods (JSON)

Files are written to a temporary name and renamed when complete.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .engine import FLAG_CONSTANT, FLAG_NONFINITE, CamResult
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
        for method in self.params:
            flags = self.f[f"flags/{method}"][:]
            self.f[f"heatmaps/{method}"].attrs["n_constant"] = int((flags & FLAG_CONSTANT).astype(bool).sum())
            self.f[f"heatmaps/{method}"].attrs["n_nonfinite"] = int((flags & FLAG_NONFINITE).astype(bool).sum())
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


def _read_heatmaps(f: h5py.File, names: list[str], raw: bool) -> Heatmaps:
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
