"""CIFAKE (Bird & Lotfi): REAL (CIFAR-10) vs FAKE (latent-diffusion) 32×32 JPEGs, and a stand-in.

Layout read (the Kaggle set ``birdy654/cifake-real-and-ai-generated-synthetic-images``)::

    <root>/train/REAL/*.jpg   <root>/train/FAKE/*.jpg
    <root>/test/REAL/*.jpg    <root>/test/FAKE/*.jpg

File names are ``N.jpg`` and ``N (k).jpg`` with k = 2…10. Classes are the folder names sorted,
[FAKE, REAL]. Every image must be ``image_size`` × ``image_size`` (32 for CIFAKE). Image ids are
``"<split>/<REAL|FAKE>/<stem>"``, e.g. ``"train/FAKE/17 (3)"``.

``meta["cifar_class"]`` maps the name suffix to a CIFAR-10 class: no suffix = airplane,
(2) = automobile, (3) = bird, …, (10) = truck; a name outside that scheme gives "unknown". This
mapping comes from third-party metadata (a CSV in the repository MinaAlmasi/CIFAKE-image-
classifiers), not from the data set's authors: treat it as unofficial.

The stand-in (:func:`generate_cifake_standin`) writes the same folders and naming scheme. REAL
images are smooth random gradients with a few distractor strokes and one shape; FAKE images are
drawn the same way plus a faint pixel-level checkerboard (the "generator artefact") in one to four
background corner blocks, which mimics the paper's finding that the classifier looks at small
background imperfections. Its ground-truth mask by image id is the artefact region for FAKE and
all zeros for REAL.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .cifar import CLASSES as CIFAR10_CLASSES
from .formats import DataError, Prepared, ReadContext, load_image, register_format, require, sha256_file, to_chw
from .imagefolder import scan
from .synthetic import SHAPES, render

CLASSES = ("FAKE", "REAL")
SPLITS = ("train", "test")
SUFFIXES = {".jpg", ".jpeg"}
LAYOUT = "<root>/{train,test}/{REAL,FAKE}/<N>.jpg or <N> (<k>).jpg, k = 2…10 (32×32 JPEG)"
_NAME = re.compile(r"^(\d+)(?: \((\d+)\))?$")


def cifar_class(stem: str) -> str:
    """The CIFAR-10 class of a CIFAKE file name (unofficial, third-party mapping); else "unknown"."""
    m = _NAME.match(stem)
    if not m:
        return "unknown"
    k = 1 if m.group(2) is None else int(m.group(2))
    if m.group(2) is not None and not 2 <= k <= 10:
        return "unknown"
    return CIFAR10_CLASSES[k - 1]


def file_stem(index: int, cifar_label: int) -> str:
    """The CIFAKE name of the ``index``-th image of CIFAR-10 class ``cifar_label`` (0 = airplane)."""
    return f"{index}" if cifar_label == 0 else f"{index} ({cifar_label + 1})"


def _whole(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise DataError(f"format 'cifake' option '{name}': a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_cifake(root: Path, image_size: int = 32, limit_per_class: int = 0) -> None:
    """Cheap: the options and the four split/class folders (no image is decoded)."""
    _whole("image_size", image_size, 1)
    _whole("limit_per_class", limit_per_class, 0)
    root = Path(root)
    require(root, LAYOUT, "CIFAKE folder not found")
    for split in SPLITS:
        for cls in CLASSES:
            folder = root / split / cls
            require(folder, LAYOUT, f"CIFAKE folder '{split}/{cls}' missing")
            if not folder.is_dir():
                raise DataError(f"{folder}: not a folder (expected layout {LAYOUT})")


def generate_cifake_standin(out: Path, *, counts: dict, seed: int, amplitude: float = 8.0, quality: int = 90,
                            corner: int = 8, clutter: int = 2, noise: float = 0.01) -> None:
    """See :func:`write_standin` (``counts`` = images per class: {"train": n, "test": m})."""
    write_standin(Path(out) / "data", Path(out) / "masks", counts=counts, seed=seed, amplitude=amplitude,
                  quality=quality, corner=corner, clutter=clutter, noise=noise)


@register_format("cifake", layout=LAYOUT, check=check_cifake, standin=generate_cifake_standin,
                 splits="native", dims=2, summary="CIFAKE: REAL vs FAKE 32×32 JPEGs in train/test folders")
def read_cifake(ctx: ReadContext, *, image_size: int = 32, limit_per_class: int = 0) -> Prepared:
    """Both splits; ``limit_per_class`` > 0 keeps the first n files (sorted by name) per class and split."""
    if ctx.channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {ctx.channels}")
    size = _whole("image_size", image_size, 1)
    limit = _whole("limit_per_class", limit_per_class, 0)
    root = ctx.root
    classes, items = scan(root, list(SPLITS), LAYOUT, SUFFIXES)
    extra = sorted(set(classes) - set(CLASSES))
    if extra:
        raise DataError(f"{root}: unexpected class folder(s) {extra}; CIFAKE has only REAL and FAKE "
                        f"(expected layout {LAYOUT})")
    if limit:
        kept, taken = [], {}
        for item in items:
            key = item[:2]
            if taken.get(key, 0) < limit:
                taken[key] = taken.get(key, 0) + 1
                kept.append(item)
        items = kept
    mode = "RGB" if ctx.channels == 3 else "L"
    images = np.empty((len(items), ctx.channels, size, size), np.uint8)
    sums = []
    for i, (_, _, path) in enumerate(items):
        arr = load_image(path, mode)
        if arr.shape[:2] != (size, size):
            raise DataError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} "
                            f"(option image_size; expected layout {LAYOUT})")
        images[i] = to_chw(arr)
        sums.append(sha256_file(path))
    return Prepared(
        images=images, labels=np.array([CLASSES.index(c) for _, c, _ in items], dtype=np.int64),
        class_names=list(CLASSES), ids=[f"{s}/{c}/{p.stem}" for s, c, p in items],
        split=[s for s, _, _ in items], source=[str(p.relative_to(root)) for _, _, p in items], sha256=sums,
        meta={"cifar_class": np.array([cifar_class(p.stem) for _, _, p in items], dtype=object)},
        attrs={"image_size": size, "limit_per_class": limit,
               "cifar_class_mapping": "unofficial (third-party metadata): no suffix = airplane, "
                                      "(2) = automobile, ..., (10) = truck"})


# ------------------------------------------------------------------------------------------------
# The stand-in
# ------------------------------------------------------------------------------------------------

def artefact_region(rng: np.random.Generator, size: int, corner: int, obj: np.ndarray) -> np.ndarray:
    """One to four corner blocks of side ``corner`` (each corner with probability 1/2), minus the object."""
    chosen = rng.uniform(size=4) < 0.5
    if not chosen.any():
        chosen[rng.integers(4)] = True
    region = np.zeros((size, size), bool)
    for k in np.flatnonzero(chosen):
        rows = slice(0, corner) if k < 2 else slice(size - corner, size)
        cols = slice(0, corner) if k % 2 == 0 else slice(size - corner, size)
        region[rows, cols] = True
    return region & ~obj


def render_standin(fake: bool, cifar_label: int, rng: np.random.Generator, *, size: int = 32,
                   amplitude: float = 8.0, corner: int = 8, clutter: int = 2,
                   noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 before JPEG and its mask (the artefact region; empty for REAL)."""
    shape = SHAPES[cifar_label % len(SHAPES)]  # the object's shape follows the CIFAR class (no cue to REAL/FAKE)
    image, obj = render(shape, rng, size, (0.15, 0.3), clutter, noise)
    region = artefact_region(rng, size, corner, obj)  # drawn for REAL too, so both use the rng alike
    if not fake:
        return image, np.zeros((size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = np.where((yy + xx) % 2 == 0, amplitude, -amplitude)
    out = image.astype(np.float64)
    out[region] += checker[region][:, None]   # the same on R, G and B: a luminance-only pattern
    return (np.clip(out, 0, 255) + 0.5).astype(np.uint8), region


def write_standin(data_root: Path, masks_root: Path, *, counts: dict, seed: int, amplitude: float = 8.0,
                  quality: int = 90, corner: int = 8, clutter: int = 2, noise: float = 0.01,
                  size: int = 32) -> int:
    """The CIFAKE folders (``data_root``) and masks by image id (``masks_root``); returns the image count.

    ``counts = {"train": n, "test": m}``: images per class (REAL and FAKE each) and split; image j of a
    class is CIFAR class j % 10 with the name ``file_stem(j // 10, j % 10)``. Each image comes from its
    own seed (seed, split, class, j). ``amplitude`` (0..255 scale) and JPEG ``quality`` are chosen so
    the artefact survives compression (at the defaults a small CNN separates the classes).
    """
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ValueError(f"cifake stand-in: counts has split(s) {unknown}; CIFAKE has 'train' and 'test' only")
    if not 0 < corner <= size // 2:
        raise ValueError(f"cifake stand-in: corner must be in 1..{size // 2}, got {corner}")
    data_root, masks_root = Path(data_root), Path(masks_root)
    written = 0
    for split in SPLITS:
        for label, cls in enumerate(CLASSES):
            (data_root / split / cls).mkdir(parents=True, exist_ok=True)
            (masks_root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(int(counts.get(split, 0))):
                rng = np.random.default_rng([seed, zlib.crc32(split.encode()), label, j])
                image, mask = render_standin(cls == "FAKE", j % 10, rng, size=size, amplitude=amplitude,
                                             corner=corner, clutter=clutter, noise=noise)
                stem = file_stem(j // 10, j % 10)
                Image.fromarray(image, "RGB").save(data_root / split / cls / f"{stem}.jpg", "JPEG", quality=quality)
                Image.fromarray(mask.astype(np.uint8) * 255, "L").save(masks_root / split / cls / f"{stem}.png")
                written += 1
    return written
