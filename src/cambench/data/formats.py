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
- ``resizes``: the reader applies ``ctx.resize`` / ``ctx.crop`` to each image as it decodes it (so
  images of mixed sizes work); for other 2D formats :func:`read_source` applies them afterwards.

After the reader, :func:`read_source` maps the labels onto the class mapping (``ctx.classes``, config
``datasets.<name>.classes``) when one is given.

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
from .preprocess import Geometry, geometry, transform_array, transform_boxes, transform_mask, transform_pil

FORMATS = Registry("format")


class DataError(ValueError):
    """Input data that does not match the expected layout or format."""


@dataclass(frozen=True)
class ReadContext:
    root: Path
    seed: int = 0
    channels: int = 3           # 2D image formats: 3 = RGB, 1 = grayscale
    resize: int = 0             # 2D: shorter side to this (torchvision Resize(int)); 0 = off
    crop: int = 0               # 2D: centre crop crop x crop after resize (CenterCrop(int)); 0 = off
    classes: tuple[str, ...] = ()  # the class mapping (names in model order), () = none; readers that
    #                                check annotation classes use it, the labels are mapped afterwards


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
    boxes: np.ndarray | None = None       # float32 (M, 4) (y0, x0, y1, x1) pixel edges, prepared image
    box_image: np.ndarray | None = None   # int64 (M,) item each box belongs to
    box_label: np.ndarray | None = None   # int64 (M,) class index of each box

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
        given = [x is not None for x in (self.boxes, self.box_image, self.box_label)]
        if any(given) and not all(given):
            raise ValueError("Prepared: boxes, box_image and box_label come together")
        if all(given):
            m = len(self.boxes)
            if self.boxes.shape != (m, 4) or len(self.box_image) != m or len(self.box_label) != m:
                raise ValueError(f"Prepared: boxes {self.boxes.shape}, box_image {len(self.box_image)}, "
                                 f"box_label {len(self.box_label)} differ (expected (M, 4), M, M)")
            if m and not (0 <= self.box_image.min() and self.box_image.max() < n):
                raise ValueError(f"Prepared: box_image outside 0..{n - 1}")


def register_format(name: str, *, layout: str, check: Callable, standin: Callable | None = None,
                    splits: str = "native", dims: int = 2, id_masks: bool = True, resizes: bool = False,
                    bounds: dict | None = None, summary: str = "") -> Callable:
    """``id_masks``: the stand-in writes masks by image id to ``out/masks`` (False for formats such
    as BraTS or MosMed whose own layout holds the masks). ``resizes``: the reader applies
    ``ctx.resize`` / ``ctx.crop`` itself. ``bounds``: of the options (see registry.py)."""
    if splits not in ("native", "assigned"):
        raise ValueError(f"format '{name}': splits must be 'native' or 'assigned'")
    return FORMATS.register(name, layout=layout, check=check, standin=standin, splits=splits, dims=dims,
                            id_masks=id_masks, resizes=resizes, bounds=bounds or {}, summary=summary)


def read_source(fmt: str, root: str | Path, options: dict | None = None, *, seed: int = 0,
                channels: int = 3, classes: list[str] | str | Path | None = None, resize: int = 0,
                crop: int = 0) -> Prepared:
    """Check the layout, read it with the format's reader (``resize`` / ``crop``: torchvision's
    evaluation transforms on every 2D image), then map the labels onto ``classes`` (a list of
    names or a mapping file, see :func:`read_class_mapping`; empty = the format's own classes)."""
    entry = FORMATS.get(fmt)
    options = dict(options or {})
    entry.check_params(options, where=f"format '{fmt}' options")
    for name, value in (("resize", resize), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DataError(f"datasets.<name>.{name}: a whole number >= 0 (0 = off), got {value!r}")
    if (resize or crop) and entry.meta["dims"] != 2:
        raise DataError(f"format '{fmt}' holds volumes; resize and crop are for 2D image formats")
    mapping = read_class_mapping(classes)
    entry.meta["check"](Path(root), **options)
    ctx = ReadContext(Path(root), seed, channels, int(resize), int(crop), tuple(mapping))
    data = entry.fn(ctx, **options)
    if (resize or crop) and not entry.meta.get("resizes"):
        transform_prepared(data, ctx.resize, ctx.crop)
    return apply_class_mapping(data, mapping, _mapping_source(classes), Path(root))


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


def decode_image(path: Path, mode: str) -> Image.Image:
    """One image file decoded and converted to ``mode``; a DataError names a file that does not decode."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: cannot decode image ({err}) (expected a complete image file that PIL reads, "
                        f"e.g. PNG or JPEG)") from None


def load_image(path: Path, mode: str) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 of one image file."""
    return np.asarray(decode_image(path, mode))


def to_chw(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1)


def read_image_files(paths: list[Path], mode: str, resize: int = 0, crop: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decode image files (converted to ``mode``, then torchvision's Resize(resize) and
    CenterCrop(crop) where set) into (N, C, H, W) uint8 and their original (N, 2) (height, width).
    Without resize and crop every image must have the size of the first."""
    images, sizes = None, np.zeros((len(paths), 2), np.int64)
    for i, path in enumerate(paths):
        im = decode_image(path, mode)
        sizes[i] = im.height, im.width
        chw = to_chw(np.asarray(transform_pil(im, geometry(im.height, im.width, resize, crop))))
        if images is None:
            images = np.empty((len(paths),) + chw.shape, np.uint8)
        elif chw.shape != images.shape[1:]:
            hint = "(after resize) resize keeps each image's aspect ratio: set datasets.<name>.crop as well" \
                if resize else \
                "set datasets.<name>.resize / crop (e.g. 256 / 224) to bring them to one"
            raise DataError(f"{path}: image size {chw.shape[2]}x{chw.shape[1]} differs from "
                            f"{images.shape[3]}x{images.shape[2]} of the first image {paths[0]}; all images must "
                            f"have one size; {hint}")
        images[i] = chw
    return (images if images is not None else np.zeros((0, 0, 0, 0), np.uint8)), sizes


def item_geometry(prepared: Prepared, i: int) -> Geometry:
    """Item ``i``'s geometry from its original size (meta orig_height / orig_width) and the
    resize / crop the set was prepared with (attrs); identity where the set was not transformed."""
    h, w = prepared.images.shape[2:]
    if "orig_height" in prepared.meta:
        h, w = int(prepared.meta["orig_height"][i]), int(prepared.meta["orig_width"][i])
    return geometry(h, w, int(prepared.attrs.get("resize", 0)), int(prepared.attrs.get("crop", 0)))


def transform_prepared(prepared: Prepared, resize: int, crop: int) -> Prepared:
    """Resize / crop a 2D set read at one size (formats whose reader does not do it itself):
    images bilinear, masks nearest, boxes scaled and clipped; the original size goes to meta."""
    if prepared.images.ndim != 4:
        raise DataError("resize and crop are for 2D image formats")
    n, _, h, w = prepared.images.shape
    geo = geometry(h, w, resize, crop)
    prepared.images = np.stack([to_chw(transform_array(im.transpose(1, 2, 0), geo)) for im in prepared.images]) \
        if n else np.zeros((0, prepared.images.shape[1], *geo.size), np.uint8)
    if prepared.masks is not None:
        prepared.masks = np.stack([transform_mask(m, geo) for m in prepared.masks]) if n else \
            np.zeros((0, *geo.size), bool)
    if prepared.boxes is not None:
        prepared.boxes, keep = transform_boxes(prepared.boxes, geo)
        prepared.box_image, prepared.box_label = prepared.box_image[keep], prepared.box_label[keep]
    prepared.meta.update(orig_height=np.full(n, h, np.int64), orig_width=np.full(n, w, np.int64))
    prepared.attrs.update(resize=resize, crop=crop)
    return prepared


# ------------------------------------------------------------------------------------------------
# Class mapping (config datasets.<name>.classes)
# ------------------------------------------------------------------------------------------------

def read_class_mapping(spec: list[str] | tuple[str, ...] | str | Path | None,
                       where: str = "datasets.<n>.classes") -> list[str]:
    """Class names in the model's output order: ``spec`` is a list of names, or the path of a text
    file with one class per line whose first whitespace-separated token is the name (the rest
    describes it, e.g. ImageNet's LOC_synset_mapping.txt 'n01440764 tench, Tinca tinca'; blank lines
    are skipped). Empty (None, [] or '') = no mapping: []."""
    if spec is None or (isinstance(spec, (str, list, tuple)) and not spec):
        return []
    if isinstance(spec, (list, tuple)):
        seen: dict[str, int] = {}
        for k, name in enumerate(spec):
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"{where}: entry {k} is {name!r}; expected a class name (a non-empty string)")
            if name in seen:
                raise DataError(f"{where}: class '{name}' appears twice (entries {seen[name]} and {k}); "
                                f"each class once, in the model's output order")
            seen[name] = k
        return list(spec)
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{path}: class mapping file not found ({where}; expected one class per line, first "
                        f"word = the name, e.g. ImageNet's LOC_synset_mapping.txt)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class mapping ({err}) ({where}; expected UTF-8 text)") from None
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if tokens[0] in lines:
            raise DataError(f"{path}:{number}: class '{tokens[0]}' repeats line {lines[tokens[0]]} ({where}; "
                            f"each class once, in the model's output order)")
        lines[tokens[0]] = number
    if not lines:
        raise DataError(f"{path}: no class names in the class mapping ({where}; expected one class per line, "
                        f"first word = the name)")
    return list(lines)


def _mapping_source(spec) -> str:
    return f"the class list {list(spec)[:3]}..." if isinstance(spec, (list, tuple)) else f"the class mapping {spec}"


def apply_class_mapping(prepared: Prepared, mapping: list[str], source: str, root: Path) -> Prepared:
    """Labels (and box labels) become indices into ``mapping``, class_names the whole mapping (a
    subset of it may be present). A class present in the data but not in the mapping is an error
    naming the class and one of its files."""
    if not mapping:
        return prepared
    index = {name: i for i, name in enumerate(mapping)}
    lookup = np.full(len(prepared.class_names), -1, np.int64)
    for k, name in enumerate(prepared.class_names):
        if name in index:
            lookup[k] = index[name]
            continue
        items = np.flatnonzero(prepared.labels == k)
        if not items.size and prepared.box_label is not None:
            items = prepared.box_image[prepared.box_label == k]
        if items.size:  # a class the format knows but no item has is not 'found'
            raise DataError(f"{root / prepared.source[int(items[0])]}: class '{name}' is not in {source} "
                            f"({len(mapping)} classes, e.g. {mapping[:3]}); every class of the data must be one "
                            f"of its names")
    prepared.labels = lookup[prepared.labels]
    if prepared.box_label is not None:
        prepared.box_label = lookup[prepared.box_label]
    prepared.class_names = list(mapping)
    return prepared


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
    for i, (source, image_id) in enumerate(zip(prepared.source, prepared.ids)):
        path = mask_path(mask_root, source, image_id, per_file)
        if not path.is_file():
            raise DataError(f"{path}: mask missing for image '{image_id}' (expected <mask_root>/<source file "
                            f"path>.png, e.g. <split>/<class>/<name>.png, or <mask_root>/<image id>.png)")
        mask = load_image(path, "L")
        geo = item_geometry(prepared, i)  # masks are given at the image's original size
        if mask.shape != (geo.height, geo.width):
            raise DataError(f"{path}: mask size {mask.shape[::-1]} differs from its image "
                            f"{(geo.width, geo.height)} (masks are given at the original image size, before "
                            f"resize / crop)")
        masks.append(transform_mask(mask > 0, geo))
    prepared.masks = np.stack(masks) if masks else np.zeros((0, *size), bool)
    prepared.mask_known = None
    return prepared
