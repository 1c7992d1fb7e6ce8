"""The project's dataset HDF5: every source format is prepared into this one layout.

    /images   (N, C, H, W) uint8            pixel values, 0..255 (3D: (N, C, D, H, W))
    /labels   (N,) int64                    class index into attrs["class_names"]
    /masks    (N, H, W) bool                ground-truth object masks (only when known)
    /ids      (N,) str                      stable image id: "<split>/<class>/<stem>"
    /keys     (N,) uint32                   32-bit hash of the id, keys the perturbation noise
    /split    (N,) str                      split name per image
    /source   (N,) str                      source file, relative to attrs["source_root"]
    /sha256   (N,) str                      checksum of each source file
    attrs: class_names, splits, source_root, mask_root, mean, std (train split, [0, 1] scale),
           provenance (JSON)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from ..utils import atomic_path

STR = h5py.string_dtype()


@dataclass
class Dataset:
    images: np.ndarray          # uint8 (N, C, *S)
    labels: np.ndarray          # int64 (N,)
    ids: np.ndarray             # str (N,)
    keys: np.ndarray            # uint32 (N,)
    masks: np.ndarray | None    # bool (N, *S)
    class_names: list[str]
    mean: list[float]
    std: list[float]
    path: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: slice | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """Float images in [0, 1] on ``device``."""
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).to(device).float().div_(255)


def write_dataset(path: str | Path, *, images: np.ndarray, labels: np.ndarray, ids: list[str],
                  keys: np.ndarray, split: list[str], source: list[str], sha256: list[str],
                  class_names: list[str], masks: np.ndarray | None, attrs: dict) -> None:
    train = np.asarray(split) == "train"
    ref = images[train] if train.any() else images
    axes = (0,) + tuple(range(2, ref.ndim))
    mean = (ref.astype(np.float64) / 255).mean(axis=axes)
    std = (ref.astype(np.float64) / 255).std(axis=axes) + 1e-6
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        chunk = (1,) + images.shape[1:]
        f.create_dataset("images", data=images, chunks=chunk, compression="gzip", compression_opts=4)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        if masks is not None:
            f.create_dataset("masks", data=masks.astype(bool), chunks=(1,) + masks.shape[1:], compression="gzip")
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=STR)
        f.create_dataset("keys", data=np.asarray(keys, dtype=np.uint32))
        f.create_dataset("split", data=np.asarray(split, dtype=object), dtype=STR)
        f.create_dataset("source", data=np.asarray(source, dtype=object), dtype=STR)
        f.create_dataset("sha256", data=np.asarray(sha256, dtype=object), dtype=STR)
        f.attrs["class_names"] = json.dumps(class_names)
        f.attrs["splits"] = json.dumps(sorted(set(split)))
        f.attrs["mean"] = mean.tolist()
        f.attrs["std"] = std.tolist()
        for key, value in attrs.items():
            f.attrs[key] = value


def read_dataset(path: str | Path, split: str | None = None) -> Dataset:
    """Load a dataset file (optionally one split) with a clear error for a wrong file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 dataset file ({err})") from None
    with f:
        missing = [k for k in ("images", "labels", "ids", "keys", "split") if k not in f]
        if missing:
            raise ValueError(f"{path}: not a cambench dataset file, missing {missing}")
        splits = f["split"].asstr()[:]
        sel = np.flatnonzero(splits == split) if split is not None else np.arange(len(splits))
        if split is not None and sel.size == 0:
            raise ValueError(f"{path}: no images in split '{split}'; splits present: {sorted(set(splits))}")
        return Dataset(
            images=f["images"][sel] if sel.size else f["images"][:0],
            labels=f["labels"][sel],
            ids=f["ids"].asstr()[sel],
            keys=f["keys"][sel],
            masks=f["masks"][sel] if "masks" in f else None,
            class_names=json.loads(f.attrs["class_names"]),
            mean=[float(v) for v in f.attrs["mean"]],
            std=[float(v) for v in f.attrs["std"]],
            path=str(path),
        )
