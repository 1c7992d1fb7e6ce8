"""Datasets: one reader per real source format plus a stand-in generator in that same format, all
writing the dataset HDF5 (see dataset.py and formats.py)."""
from __future__ import annotations

import importlib
import logging
import pkgutil
import shutil
from pathlib import Path

from .dataset import Dataset, read_dataset, split_size, write_dataset
from .formats import (
    FORMATS,
    DataError,
    Prepared,
    ReadContext,
    attach_masks,
    check_source,
    read_class_mapping,
    read_source,
)
from .imagefolder import prepare_image_folder
from .synthetic import SHAPES, generate_shapes

# Importing every module of the package registers its format (found by pkgutil, no hand-kept list).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

log = logging.getLogger("cambench")

# Stand-in kinds and the format their files are written in ('shapes' is a class-folder set).
STANDIN_FORMATS = {"shapes": "imagefolder", **{name: name for name in FORMATS.names() if name != "imagefolder"}}


def standin_format(kind: str) -> str:
    try:
        return STANDIN_FORMATS[kind]
    except KeyError:
        raise DataError(f"unknown stand-in kind '{kind}'; available: {', '.join(sorted(STANDIN_FORMATS))}") from None


def generate_standin(kind: str, out: str | Path, *, counts: dict, seed: int, **params) -> None:
    """Write the stand-in of ``kind`` in its real layout to ``out/data`` (+ id masks to ``out/masks``)."""
    entry = FORMATS.get(standin_format(kind))
    entry.meta["standin"](Path(out), counts=counts, seed=seed, **params)


def write_standin(output_dir: str | Path, spec: dict, seed: int) -> dict:
    """Write the stand-in of a config's ``standin`` block (``spec``: kind, counts, params) in its real
    layout to ``<output_dir>/data`` (+ ``/masks``), whole or not at all: it is written beside the
    folder, which it then replaces."""
    out = Path(output_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    params = dict(spec.get("params") or {})
    if spec["kind"] == "shapes":  # the shapes generator's own keys sit in the stand-in block itself
        params.update({k: spec[k] for k in ("classes", "image_size", "clutter", "noise") if k in spec})
    generate_standin(spec["kind"], tmp, counts=spec["counts"], seed=seed, **params)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    n = sum(1 for p in (out / "data").rglob("*") if p.is_file())
    log.info("wrote %d stand-in files (%s) to %s", n, spec["kind"], out)
    return {"files": n}


def prepare(fmt: str, root: str | Path, output: str | Path, *, mask_root: str | Path | None = None,
            options: dict | None = None, seed: int = 0, channels: int = 3, attrs: dict | None = None,
            classes: list[str] | str | Path | None = None, resize: int = 0, crop: int = 0) -> dict:
    """Read ``root`` in format ``fmt`` (+ masks by id from ``mask_root``, given at the images' original
    size) into the dataset HDF5. ``classes``: the class mapping (a list, or a file: see
    :func:`read_class_mapping`); ``resize`` / ``crop``: torchvision's Resize / CenterCrop on 2D images."""
    data = read_source(fmt, root, options, seed=seed, channels=channels, classes=classes, resize=resize, crop=crop)
    if mask_root:
        attach_masks(data, mask_root)
    write_dataset(output, data, {"source_root": str(root), "mask_root": str(mask_root or ""), "format": fmt,
                                 **(attrs or {})})
    counts = {s: data.split.count(s) for s in sorted(set(data.split))}
    return {"format": fmt, "classes": data.class_names, "counts": counts, "shape": list(data.images.shape[1:]),
            "masks": data.masks is not None}


__all__ = ["item_dims", "standin_writes_masks", "Dataset", "read_dataset", "split_size", "write_dataset", "DataError",
           "Prepared", "ReadContext", "FORMATS", "read_class_mapping", "attach_masks", "check_source", "read_source",
           "prepare", "generate_standin", "write_standin", "standin_format", "prepare_image_folder", "SHAPES",
           "generate_shapes"]


def standin_writes_masks(kind: str) -> bool:
    """Whether the stand-in writes masks by image id (formats whose layout has no masks of its own)."""
    return FORMATS.get(standin_format(kind)).meta.get("id_masks", True)


def item_dims(fmt: str, options: dict | None = None) -> int:
    """Spatial dimensions of the prepared items: the format's ``dims``, or ``dims(options)``."""
    dims = FORMATS.get(fmt).meta["dims"]
    return int(dims(dict(options or {}))) if callable(dims) else int(dims)
