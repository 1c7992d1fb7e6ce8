"""Source formats: one registered reader per real data layout, all producing :class:`Prepared`.

A format is registered with::

    @register_format("cifar10", layout="<root>/data_batch_1..5, test_batch, batches.meta",
                     check=check_cifar10, standin=generate_cifar10, splits="native", dims=2)
    def read_cifar10(ctx: ReadContext, *, option_a: int = 1, ...) -> Prepared: ...

- ``ctx`` carries the root folder, the master seed and the requested channels; the keyword
  arguments are the format's options (config ``datasets.<name>.options``), validated against the
  signature before any job runs.
- ``check(root, **options)`` is cheap (no decoding): it raises :class:`DataError` naming the first
  missing file or folder and the expected ``layout``. The workflow calls it before any job starts.
- ``standin(out, *, counts, seed, **params)`` writes a synthetic data set in the *real* layout to
  ``out / "data"`` (read back by the reader, like real data) and, for formats without native masks,
  ground-truth masks by image id to ``out / "masks"`` (see :func:`attach_masks`).
- ``splits``: "native" (the layout names the splits) or "assigned" (no splits in the layout;
  the reader calls :func:`assign_splits`).
- ``dims``: 2 (images) or 3 (volumes) — of the prepared items (BraTS slices are 2D).
- ``id_masks``: whether the stand-in writes masks by id to ``out / "masks"``.

Every reader reports a problem with the offending file before anything is written.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..registry import Registry

FORMATS = Registry("format")


class DataError(ValueError):
    """Input data that does not match the expected layout or format."""


@dataclass(frozen=True)
class ReadContext:
    root: Path
    seed: int = 0
    channels: int = 3           # 2D image formats: 3 = RGB, 1 = grayscale


@dataclass
class Prepared:
    """Everything the dataset HDF5 holds, in one order (see dataset.py for the file layout)."""
    images: np.ndarray                    # uint8 (N, C, H, W) or (N, C, D, H, W)
    labels: np.ndarray                    # int64 (N,)
    class_names: list[str]
    ids: list[str]                        # unique, stable, path-like ("<split>/<class>/<stem>")
    split: list[str]
    source: list[str]                     # source file per item, relative to the root
    sha256: list[str]                     # checksum of that source file
    masks: np.ndarray | None = None       # bool (N, *spatial) ground truth, where known
    mask_known: np.ndarray | None = None  # bool (N,); None = every mask known (when masks is set)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # per-item columns (numbers or str)
    attrs: dict = field(default_factory=dict)                  # format facts for the file's attrs

    def __post_init__(self) -> None:
        n = len(self.labels)
        lengths = {"images": len(self.images), "ids": len(self.ids), "split": len(self.split),
                   "source": len(self.source), "sha256": len(self.sha256),
                   **({"masks": len(self.masks)} if self.masks is not None else {}),
                   **({"mask_known": len(self.mask_known)} if self.mask_known is not None else {}),
                   **{f"meta.{k}": len(v) for k, v in self.meta.items()}}
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"Prepared: {n} labels but {bad}")
        if n and len(set(self.ids)) != n:
            raise ValueError("Prepared: image ids are not unique")
        if self.masks is not None and self.masks.shape[1:] != self.images.shape[2:]:
            raise ValueError(f"Prepared: masks {self.masks.shape[1:]} do not match images {self.images.shape[2:]}")


def register_format(name: str, *, layout: str, check: Callable, standin: Callable | None = None,
                    splits: str = "native", dims: int = 2, id_masks: bool = True, summary: str = "") -> Callable:
    """``id_masks``: the stand-in writes masks by image id to ``out/masks`` (False for formats such
    as BraTS or MosMed whose own layout holds the masks)."""
    if splits not in ("native", "assigned"):
        raise ValueError(f"format '{name}': splits must be 'native' or 'assigned'")
    return FORMATS.register(name, layout=layout, check=check, standin=standin, splits=splits, dims=dims,
                            id_masks=id_masks, summary=summary)


def read_source(fmt: str, root: str | Path, options: dict | None = None, *, seed: int = 0,
                channels: int = 3) -> Prepared:
    """Check the layout, then read it with the format's reader."""
    entry = FORMATS.get(fmt)
    options = dict(options or {})
    entry.check_params(options, where=f"format '{fmt}' options")
    entry.meta["check"](Path(root), **options)
    return entry.fn(ReadContext(Path(root), seed, channels), **options)


def check_source(fmt: str, root: str | Path, options: dict | None = None) -> None:
    """The cheap layout check alone (no decoding): raises DataError naming the missing file."""
    entry = FORMATS.get(fmt)
    entry.meta["check"](Path(root), **dict(options or {}))


# ------------------------------------------------------------------------------------------------
# Helpers shared by the readers
# ------------------------------------------------------------------------------------------------

def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require(path: Path, layout: str, what: str = "") -> Path:
    """``path`` must exist; otherwise a DataError naming it and the expected layout."""
    if not path.exists():
        raise DataError(f"{path}: {what or 'not found'} (expected layout {layout})")
    return path


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2 ** 64


def assign_splits(groups: list[str], labels: np.ndarray, test_fraction: float, seed: int) -> list[str]:
    """'train' / 'test' per item for layouts without splits: stratified by label, grouped.

    Items sharing a group (e.g. the slices of one case) always land in the same split. Within each
    class, groups are ordered by a hash of (seed, group) and the first ``round(test_fraction * G)``
    (at least one when the class has two or more groups) become test. Deterministic, and a group's
    split does not depend on which other groups exist beyond its class's count.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    group_label: dict[str, int] = {}
    for g, y in zip(groups, labels.tolist()):
        group_label.setdefault(g, y)  # a group's class is that of its first item
    test_groups: set[str] = set()
    for y in sorted(set(group_label.values())):
        members = sorted((g for g, gy in group_label.items() if gy == y), key=lambda g: (_unit_hash(seed, g), g))
        k = int(round(test_fraction * len(members)))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        else:
            k = 0
        test_groups.update(members[:k])
    return ["test" if g in test_groups else "train" for g in groups]


def load_image(path: Path, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 of one image file; a DataError names a file that does not decode."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err}) (expected a complete image file that PIL reads, "
                        f"e.g. PNG or JPEG)") from None


def to_chw(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1)


def mask_path(mask_root: Path, source: str, image_id: str, per_file: bool) -> Path:
    """Where an item's mask lives: its source file's relative path with '.png' (when each item has
    its own source file), else ``<mask_root>/<id>.png`` (e.g. CIFAR batches hold many images)."""
    if per_file:
        by_source = (mask_root / source).with_suffix(".png")
        if by_source.is_file():
            return by_source
    return mask_root / f"{image_id}.png"


def attach_masks(prepared: Prepared, mask_root: str | Path) -> Prepared:
    """Masks for a 2D set (non-zero = object), one per image, found by :func:`mask_path`."""
    mask_root = Path(mask_root)
    if prepared.images.ndim != 4:
        raise DataError(f"{mask_root}: mask_root is for 2D images; volume formats read their own masks")
    per_file = len(set(prepared.source)) == len(prepared.source)
    masks = []
    size = prepared.images.shape[2:]
    for source, image_id in zip(prepared.source, prepared.ids):
        path = mask_path(mask_root, source, image_id, per_file)
        if not path.is_file():
            raise DataError(f"{path}: mask missing for image '{image_id}' (expected <mask_root>/<source file "
                            f"path>.png, e.g. <split>/<class>/<name>.png, or <mask_root>/<image id>.png)")
        mask = load_image(path, "L")
        if mask.shape != size:
            raise DataError(f"{path}: mask size {mask.shape[::-1]} differs from its image {tuple(size)[::-1]}")
        masks.append(mask > 0)
    prepared.masks = np.stack(masks) if masks else np.zeros((0, *size), bool)
    prepared.mask_known = None
    return prepared
