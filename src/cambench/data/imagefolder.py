"""The class-folder image set ("bring your own"), and the shapes stand-in written in that layout.

Layout read (the torchvision ImageFolder convention, one folder per split)::

    <root>/<split>/<class>/<name>.<png|jpg|jpeg|bmp|tif|tiff>
    <mask_root>/<split>/<class>/<name>.png        optional; non-zero = object

Every image must decode and, unless the set is resized / cropped (config datasets.<name>.resize,
crop), have the same size; with ``mask_root`` every image needs a mask of its (original) size. Only
the split folders present are read (an evaluation-only set has no 'train'). Problems are reported
with the offending file before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import write_dataset
from .formats import (
    DataError,
    Prepared,
    ReadContext,
    attach_masks,
    read_image_files,
    read_source,
    register_format,
    sha256_file,
)
from .synthetic import SHAPES, generate_shapes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
LAYOUT = "<root>/<split>/<class>/<image file>"


def scan(root: Path, splits: list[str] | None = None, layout: str = LAYOUT,
         suffixes: set[str] = IMAGE_SUFFIXES) -> tuple[list[str], list[tuple[str, str, Path]]]:
    """Class names and (split, class, file) triples, sorted for a stable order."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected layout {layout})")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = splits or found
    missing = [s for s in splits if s not in found]
    if missing or not splits:
        raise DataError(f"{root}: split folder(s) {missing or '(none)'} not found; "
                        f"present: {found or 'nothing'} (expected layout {layout})")
    classes = sorted({c.name for s in splits for c in (root / s).iterdir()
                      if c.is_dir() and not c.name.startswith(".")})  # e.g. .ipynb_checkpoints
    if not classes:
        raise DataError(f"{root}: no class folders under the splits {splits} (expected layout {layout})")
    items = []
    for split in splits:
        for cls in classes:
            folder = root / split / cls
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in suffixes) \
                if folder.is_dir() else []
            if not files and split == "train":
                raise DataError(f"{folder}: class '{cls}' has no images in split '{split}' (expected layout {layout})")
            items += [(split, cls, f) for f in files]
    return classes, items


def read_items(root: Path, classes: list[str], items: list[tuple[str, str, Path]], mode: str,
               resize: int = 0, crop: int = 0) -> Prepared:
    """Decode (split, class, file) triples (of one size, unless ``resize`` / ``crop`` bring them to
    one) into a :class:`Prepared` set; the original sizes go to meta orig_height / orig_width."""
    images, sizes = read_image_files([p for _, _, p in items], mode, resize, crop)
    return Prepared(
        images=images, labels=np.array([classes.index(c) for _, c, _ in items], dtype=np.int64),
        class_names=list(classes), ids=[f"{s}/{c}/{p.stem}" for s, c, p in items],
        split=[s for s, _, _ in items], source=[str(p.relative_to(root)) for _, _, p in items],
        sha256=[sha256_file(p) for _, _, p in items],
        meta={"orig_height": sizes[:, 0], "orig_width": sizes[:, 1]}, attrs={"resize": resize, "crop": crop})


def _mode(channels: int) -> str:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    return "RGB" if channels == 3 else "L"


def check_image_folder(root: Path) -> None:
    scan(root)


def generate_shapes_standin(out: Path, *, counts: dict, seed: int, classes=SHAPES[:4], image_size: int = 64,
                            clutter: int = 10, noise: float = 0.04) -> None:
    generate_shapes(out / "data", out / "masks", counts=counts, classes=classes, image_size=image_size,
                    clutter=clutter, noise=noise, seed=seed)


@register_format("imagefolder", layout=LAYOUT, check=check_image_folder, standin=generate_shapes_standin,
                 resizes=True, summary="class folders per split (bring your own); any PIL-readable image")
def read_image_folder(ctx: ReadContext) -> Prepared:
    classes, items = scan(ctx.root)
    return read_items(ctx.root, classes, items, _mode(ctx.channels), ctx.resize, ctx.crop)


def prepare_image_folder(root: str | Path, output: str | Path, mask_root: str | Path | None = None,
                         splits: list[str] | None = None, channels: int = 3, attrs: dict | None = None) -> dict:
    """Read a class-folder set (optionally only ``splits``), check it, write the dataset HDF5."""
    root = Path(root)
    mode = _mode(channels)
    if splits is None:
        data = read_source("imagefolder", root, channels=channels)
    else:
        data = read_items(root, *scan(root, splits), mode)
    if mask_root:
        attach_masks(data, mask_root)
    write_dataset(output, data, {"source_root": str(root), "mask_root": str(mask_root or ""),
                                 "format": "imagefolder", **(attrs or {})})
    counts = {s: data.split.count(s) for s in sorted(set(data.split))}
    return {"classes": data.class_names, "counts": counts, "size": list(data.images.shape[2:]),
            "masks": mask_root is not None}
