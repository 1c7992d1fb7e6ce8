"""The project's dataset HDF5: every source format is prepared into this one layout.

    /images   (N, C, H, W) uint8            pixel values, 0..255 (3D: (N, C, D, H, W))
    /labels   (N,) int64                    class index into attrs["class_names"]
    /masks    (N, *S) bool                  ground-truth object masks (only when known)
    /mask_known (N,) bool                   which masks are known (absent = all of them)
    /meta/<column> (N,)                     per-item facts of the source format (e.g. lat, lon, z;
                                            orig_height / orig_width before resize / crop)
    /boxes    (M, 4) float32                ground-truth boxes (optional): (y0, x0, y1, x1) pixel edges
                                            of the prepared image, stop exclusive
    /box_image (M,) int64                   the item each box belongs to
    /box_label (M,) int64                   the class index each box is annotated with
    /ids      (N,) str                      stable image id: "<split>/<class>/<stem>"
    /keys     (N,) uint32                   32-bit hash of the id, keys the perturbation noise
    /split    (N,) str                      split name per image
    /source   (N,) str                      source file, relative to attrs["source_root"]
    /sha256   (N,) str                      checksum of each source file
    attrs: class_names, splits, format, source_root, mask_root, mean, std (train split, [0, 1]
           scale), format_attrs (JSON), provenance (JSON)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor

from ..counter_rng import string_key
from ..utils import atomic_path, json_attribute
from .formats import DataError, Prepared

STR = h5py.string_dtype()


@dataclass
class Dataset:
    images: np.ndarray          # uint8 (N, C, *S)
    labels: np.ndarray          # int64 (N,)
    ids: np.ndarray             # str (N,)
    keys: np.ndarray            # uint32 (N,)
    masks: np.ndarray | None    # bool (N, *S); unknown masks are all False
    class_names: list[str]
    mean: list[float]
    std: list[float]
    path: str = ""
    mask_known: np.ndarray | None = None   # bool (N,) when only some masks are known
    meta: dict[str, np.ndarray] = field(default_factory=dict)   # the source format's per-item columns
    boxes: np.ndarray | None = None       # float32 (M, 4) (y0, x0, y1, x1) of the rows read; None = no boxes
    box_image: np.ndarray | None = None   # int64 (M,) row (0..len-1 of the rows read) of each box
    box_label: np.ndarray | None = None   # int64 (M,) class index of each box

    def __len__(self) -> int:
        return len(self.labels)

    def pixels(self, index: slice | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """Float images in [0, 1] on ``device``."""
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).to(device).float().div_(255)


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (+1e-6) on the [0, 1] scale; one float64 copy of one channel at a
    time, so a large volume set is never copied to float64 whole."""
    stats = []
    for c in range(images.shape[1]):
        channel = images[:, c].astype(np.float64) / 255
        stats.append((channel.mean(), channel.std()))
    mean, std = np.array(stats).T
    return mean, std + 1e-6


def write_dataset(path: str | Path, data: Prepared, attrs: dict) -> None:
    """Write a :class:`Prepared` set (atomically) with train-split channel statistics."""
    images = data.images
    if len(images) == 0:
        raise DataError(f"{attrs.get('source_root', path)}: no images found")
    if images.dtype != np.uint8 or images.ndim not in (4, 5):
        raise ValueError(f"images must be uint8 (N, C, H, W) or (N, C, D, H, W), got {images.dtype} {images.shape}")
    train = np.asarray(data.split) == "train"
    ref = images[train] if train.any() else images
    mean, std = _channel_stats(ref)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        chunk = (1,) + images.shape[1:]
        f.create_dataset("images", data=images, chunks=chunk, compression="gzip", compression_opts=4)
        f.create_dataset("labels", data=np.asarray(data.labels, dtype=np.int64))
        if data.masks is not None:
            masks = data.masks.astype(bool)
            f.create_dataset("masks", data=masks, chunks=(1,) + masks.shape[1:], compression="gzip")
            if data.mask_known is not None:
                f.create_dataset("mask_known", data=np.asarray(data.mask_known, dtype=bool))
        f.create_dataset("ids", data=np.asarray(data.ids, dtype=object), dtype=STR)
        keys = np.array([string_key(i) for i in data.ids], dtype=np.uint32)
        f.create_dataset("keys", data=keys)
        f.create_dataset("split", data=np.asarray(data.split, dtype=object), dtype=STR)
        f.create_dataset("source", data=np.asarray(data.source, dtype=object), dtype=STR)
        f.create_dataset("sha256", data=np.asarray(data.sha256, dtype=object), dtype=STR)
        if data.boxes is not None:
            f.create_dataset("boxes", data=np.asarray(data.boxes, dtype=np.float32).reshape(-1, 4))
            f.create_dataset("box_image", data=np.asarray(data.box_image, dtype=np.int64))
            f.create_dataset("box_label", data=np.asarray(data.box_label, dtype=np.int64))
        for column, values in data.meta.items():
            values = np.asarray(values)
            if values.dtype.kind in "OUS":
                f.create_dataset(f"meta/{column}", data=values.astype(object), dtype=STR)
            else:
                f.create_dataset(f"meta/{column}", data=values)
        f.attrs["class_names"] = json.dumps(data.class_names)
        f.attrs["splits"] = json.dumps(sorted(set(data.split)))
        f.attrs["mean"] = mean.tolist()
        f.attrs["std"] = std.tolist()
        f.attrs["format_attrs"] = json.dumps(data.attrs, sort_keys=True, default=str)
        for key, value in attrs.items():
            f.attrs[key] = value


def read_dataset(path: str | Path, split: str | None = None, rows: slice | None = None) -> Dataset:
    """Load a dataset file (optionally one split, and of it only ``rows``, e.g. one shard: only
    those items are read from disk) with a clear error for a wrong file."""
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
        absent = [k for k in ("class_names", "mean", "std") if k not in f.attrs]
        if absent:
            raise ValueError(f"{path}: not a cambench dataset file, attribute(s) {absent} missing")
        try:
            return _read(f, path, split, rows)
        except OSError as err:  # a damaged chunk or a dataset cut short
            raise ValueError(f"{path}: cannot read the dataset file ({err}) (expected an intact dataset HDF5; "
                             f"prepare it again)") from None


def _read(f: h5py.File, path: Path, split: str | None, rows: slice | None = None) -> Dataset:
    n = len(f["labels"])
    per_item = [k for k in ("images", "ids", "keys", "split", "source", "sha256", "masks", "mask_known") if k in f]
    per_item += [f"meta/{k}" for k in f["meta"]] if "meta" in f else []
    for key in per_item:
        if len(f[key]) != n:
            raise ValueError(f"{path}: '{key}' has {len(f[key])} entries but 'labels' has {n} "
                             f"(expected one per item)")
    class_names = json_attribute(f.attrs, "class_names", path, list)
    labels = f["labels"][:]
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        raise ValueError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} is out of range "
                         f"0..{len(class_names) - 1} (expected a class index into the {len(class_names)} "
                         f"class_names {class_names})")
    splits = f["split"].asstr()[:]
    sel = np.flatnonzero(splits == split) if split is not None else np.arange(len(splits))
    if split is not None and sel.size == 0:
        raise ValueError(f"{path}: no images in split '{split}'; splits present: {sorted(set(splits))}")
    if rows is not None:
        sel = sel[rows]
    boxes = _read_boxes(f, path, n, sel)
    return Dataset(
        images=f["images"][sel] if sel.size else f["images"][:0],  # reads only the rows selected
        labels=labels[sel],
        ids=f["ids"].asstr()[sel],
        keys=f["keys"][sel],
        masks=f["masks"][sel] if "masks" in f else None,
        mask_known=f["mask_known"][sel] if "mask_known" in f else None,
        meta={k: (v.asstr()[sel] if h5py.check_string_dtype(v.dtype) else v[sel])
              for k, v in f["meta"].items()} if "meta" in f else {},
        class_names=class_names,
        mean=[float(v) for v in f.attrs["mean"]],
        std=[float(v) for v in f.attrs["std"]],
        path=str(path),
        **boxes,
    )


def _read_boxes(f: h5py.File, path: Path, n: int, sel: np.ndarray) -> dict:
    """The boxes of the rows ``sel``, box_image re-indexed to positions in ``sel``."""
    if "boxes" not in f:
        return {}
    boxes, image, label = f["boxes"][:], f["box_image"][:], f["box_label"][:]
    if boxes.shape != (len(image), 4) or len(label) != len(image) or \
            (len(image) and not (0 <= image.min() and image.max() < n)):
        raise ValueError(f"{path}: boxes {boxes.shape}, box_image {image.shape}, box_label {label.shape} are "
                         f"inconsistent (expected (M, 4), (M,), (M,) with box_image in 0..{n - 1})")
    position = np.full(n, -1, np.int64)
    position[sel] = np.arange(len(sel))
    keep = position[image] >= 0
    return {"boxes": boxes[keep], "box_image": position[image[keep]], "box_label": label[keep]}


def split_size(path: str | Path, split: str) -> int:
    """Items of ``split`` in a dataset file, reading only its /split column (the shard count of a
    workflow is decided from it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            return int(np.count_nonzero(f["split"].asstr()[:] == split))
    except (OSError, KeyError) as err:
        raise ValueError(f"{path}: cannot read the split column ({err})") from None
