"""Prepare a class-folder image set into the dataset HDF5.

Layout read (the torchvision ImageFolder convention, one folder per split)::

    <root>/<split>/<class>/<name>.<png|jpg|jpeg|bmp|tif|tiff>
    <mask_root>/<split>/<class>/<name>.png        optional; non-zero = object

Every image must decode and have the same size; with ``mask_root`` every image needs a mask of
its size. Problems are reported with the offending file before anything is written.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..perturbations import string_key
from .dataset import write_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
LAYOUT = "<root>/<split>/<class>/<image file>"


class DataError(ValueError):
    """Input data that does not match the expected layout or format."""


def scan(root: Path, splits: list[str] | None = None) -> tuple[list[str], list[tuple[str, str, Path]]]:
    """Class names and (split, class, file) triples, sorted for a stable order."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected layout {LAYOUT})")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = splits or found
    missing = [s for s in splits if s not in found]
    if missing or not splits:
        raise DataError(f"{root}: split folder(s) {missing or '(none)'} not found; "
                        f"present: {found or 'nothing'} (expected layout {LAYOUT})")
    classes = sorted({c.name for s in splits for c in (root / s).iterdir() if c.is_dir()})
    if not classes:
        raise DataError(f"{root}: no class folders under the splits {splits} (expected layout {LAYOUT})")
    items = []
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
                if folder.is_dir() else []
            if not files and split == "train":
                raise DataError(f"{folder}: class '{cls}' has no images in split '{split}'")
            items += [(split, cls, f) for f in files]
    return classes, items


def _load_image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot decode image ({err})") from None


def prepare_image_folder(root: str | Path, output: str | Path, mask_root: str | Path | None = None,
                         splits: list[str] | None = None, channels: int = 3, attrs: dict | None = None) -> dict:
    """Read the folder, check it, write the dataset HDF5; returns a summary."""
    root = Path(root)
    mask_root = Path(mask_root) if mask_root else None
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    classes, items = scan(root, splits)
    mode = "RGB" if channels == 3 else "L"
    images, masks, sums = [], [], []
    size = None
    for split, cls, path in items:
        data = path.read_bytes()
        sums.append(hashlib.sha256(data).hexdigest())
        arr = _load_image(path, mode)
        if size is None:
            size = arr.shape[:2]
        elif arr.shape[:2] != size:
            raise DataError(f"{path}: image size {arr.shape[1]}x{arr.shape[0]} differs from "
                            f"{size[1]}x{size[0]} of the first image; all images must have one size")
        images.append(arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1))
        if mask_root is not None:
            mpath = (mask_root / path.relative_to(root)).with_suffix(".png")
            if not mpath.is_file():
                raise DataError(f"{mpath}: mask missing for image {path}")
            mask = _load_image(mpath, "L")
            if mask.shape != size:
                raise DataError(f"{mpath}: mask size {mask.shape[::-1]} differs from its image {size[::-1]}")
            masks.append(mask > 0)
    ids = [f"{s}/{c}/{p.stem}" for s, c, p in items]
    write_dataset(
        output,
        images=np.stack(images), labels=np.array([classes.index(c) for _, c, _ in items]),
        ids=ids, keys=np.array([string_key(i) for i in ids], dtype=np.uint32),
        split=[s for s, _, _ in items], source=[str(p.relative_to(root)) for _, _, p in items],
        sha256=sums, class_names=classes, masks=np.stack(masks) if masks else None,
        attrs={"source_root": str(root), "mask_root": str(mask_root or ""), "format": "imagefolder",
               **(attrs or {})},
    )
    counts = {s: sum(1 for it in items if it[0] == s) for s in sorted({it[0] for it in items})}
    return {"classes": classes, "counts": counts, "size": list(size), "masks": mask_root is not None}
