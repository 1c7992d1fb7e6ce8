"""Street View-style accident hotspot images (docs/papers.md §12) and a synthetic street-scene stand-in.

Layout read (the real Street View images are not redistributable; bring your own)::

    <root>/hotspot/<name>.jpg|jpeg|png          images near accident hotspots
    <root>/non_hotspot/<name>.jpg|jpeg|png      images of accident-sparse places
    <root>/labels.csv                           filename,lat,lon,heading,label

``filename`` is relative to the root (``hotspot/0001.jpg``); ``label`` is ``hotspot`` or
``non_hotspot`` and must agree with the file's folder; ``lat``/``lon``/``heading`` may be empty
(unknown, NaN in the dataset's ``meta`` columns). Every image in a class folder needs a row, and
every row an image that decodes. The layout has no splits: the reader assigns them (stratified,
``test_fraction``). Ids are ``<split>/<class>/<stem>``.

The stand-in (:func:`generate_street_standin`) writes this layout with scenes drawn by
:mod:`cambench.data.street_scenes`; the warning sign of a hotspot scene is the planted mask.
"""
from __future__ import annotations

import csv as csvlib
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .formats import (
    DataError,
    Prepared,
    ReadContext,
    assign_splits,
    load_image,
    register_format,
    require,
    sha256_file,
    to_chw,
)
from .street_scenes import render_street

CLASSES = ("hotspot", "non_hotspot")
SUFFIXES = (".jpg", ".jpeg", ".png")
COLUMNS = ("filename", "lat", "lon", "heading", "label")
REQUIRED = ("filename", "label")
LAYOUT = ("<root>/{hotspot,non_hotspot}/<name>.jpg|jpeg|png + <root>/labels.csv "
          "with columns filename,lat,lon,heading,label (filename relative to <root>)")
RANGES = {"lat": (-90.0, 90.0, True), "lon": (-180.0, 180.0, True), "heading": (0.0, 360.0, False)}


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

@dataclass
class _Row:
    number: int          # 1-based data row (the header is row 0)
    line: int            # line in the CSV file
    filename: str        # normalised, relative to the root ("hotspot/0001.jpg")
    label: str
    lat: float
    lon: float
    heading: float


def _csv_rows(root: Path, csv: str) -> tuple[Path, list[tuple[int, int, dict]]]:
    """The CSV's path and its data rows as (row number, line, {column: text}); header checked."""
    if not isinstance(csv, str) or not csv:
        raise DataError(f"option csv must be a file name relative to the root, got {csv!r} (expected layout {LAYOUT})")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected layout {LAYOUT})")
    path = require(root / csv, LAYOUT, "labels CSV not found")
    if not path.is_file():
        raise DataError(f"{path}: labels CSV is not a file (expected layout {LAYOUT})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csvlib.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: labels CSV is empty, no header (expected layout {LAYOUT})")
            header = [h.strip().lower() for h in header]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DataError(f"{path}: labels CSV lacks the column(s) {missing}; header is {header} "
                                f"(expected layout {LAYOUT})")
            duplicated = sorted({h for h in header if h and header.count(h) > 1})
            if duplicated:
                raise DataError(f"{path}: labels CSV names the column(s) {duplicated} twice (expected layout {LAYOUT})")
            rows = []
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # a blank line
                number = len(rows) + 1
                if len(values) > len(header):
                    raise DataError(f"{path} row {number} (line {reader.line_num}): {len(values)} fields but the "
                                    f"header has {len(header)} (expected layout {LAYOUT})")
                values = values + [""] * (len(header) - len(values))
                rows.append((number, reader.line_num, {h: v.strip() for h, v in zip(header, values)}))
    except (UnicodeDecodeError, csvlib.Error) as err:
        raise DataError(f"{path}: cannot parse the labels CSV ({err}) (expected layout {LAYOUT})") from None
    return path, rows


def _filename(text: str) -> str | None:
    """``text`` as a clean relative POSIX path, or None when it is empty, absolute or leaves the root."""
    text = text.replace("\\", "/")
    pure = PurePosixPath(text)
    parts = [p for p in pure.parts if p != "."]
    if not parts or pure.is_absolute() or ".." in parts:
        return None
    return "/".join(parts)


def _number(text: str, column: str, where: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {column} '{text}' is not a number (expected layout {LAYOUT})") from None
    low, high, closed = RANGES[column]
    inside = low <= value <= high if closed else low <= value < high
    if not inside:
        interval = f"[{low:g}, {high:g}]" if closed else f"[{low:g}, {high:g})"
        raise DataError(f"{where}: {column} {text} outside {interval} (expected layout {LAYOUT})")
    return value


def _parse_rows(root: Path, csv_path: Path, raw: list[tuple[int, int, dict]],
                require_coordinates: bool) -> list[_Row]:
    rows: list[_Row] = []
    first_row: dict[str, int] = {}
    first_id: dict[str, tuple[int, str]] = {}
    for number, line, values in raw:
        where = f"{csv_path} row {number} (line {line})"
        name = _filename(values.get("filename", ""))
        if name is None:
            raise DataError(f"{where}: filename '{values.get('filename', '')}' must be a path relative to the "
                            f"root, e.g. hotspot/0001.jpg (expected layout {LAYOUT})")
        where = f"{where}, {name}"
        parts = name.split("/")
        if len(parts) != 2 or parts[0] not in CLASSES:
            raise DataError(f"{where}: the image must sit directly in a class folder ({' or '.join(CLASSES)}) "
                            f"(expected layout {LAYOUT})")
        if Path(parts[1]).suffix.lower() not in SUFFIXES:
            raise DataError(f"{where}: not a {'/'.join(SUFFIXES)} file (expected layout {LAYOUT})")
        label = values.get("label", "").lower()
        if label not in CLASSES:
            raise DataError(f"{where}: label '{values.get('label', '')}' is not one of {', '.join(CLASSES)} "
                            f"(expected layout {LAYOUT})")
        if label != parts[0]:
            raise DataError(f"{where}: label '{label}' disagrees with the image's folder '{parts[0]}' "
                            f"(expected layout {LAYOUT})")
        if name in first_row:
            raise DataError(f"{where}: duplicate filename, already listed in row {first_row[name]} "
                            f"(expected layout {LAYOUT})")
        first_row[name] = number
        key = f"{label}/{Path(parts[1]).stem}"
        if key in first_id:
            raise DataError(f"{where}: same name stem as {first_id[key][1]} (row {first_id[key][0]}); image ids "
                            f"(<split>/<class>/<stem>) would collide (expected layout {LAYOUT})")
        first_id[key] = (number, name)
        lat, lon, heading = (_number(values.get(c, ""), c, where) for c in ("lat", "lon", "heading"))
        if math.isnan(lat) != math.isnan(lon):
            raise DataError(f"{where}: lat and lon must be given together (expected layout {LAYOUT})")
        if require_coordinates and math.isnan(lat):
            raise DataError(f"{where}: lat/lon missing, and require_coordinates is set (expected layout {LAYOUT})")
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: image named in {csv_path} row {number} (line {line}) not found "
                            f"(expected layout {LAYOUT})")
        rows.append(_Row(number, line, name, label, lat, lon, heading))
    return rows


def _unlisted(root: Path, listed: set[str]) -> list[str]:
    """Image files in the class folders that the CSV does not name (hidden files ignored)."""
    extra = []
    for cls in CLASSES:
        folder = root / cls
        if folder.is_dir():
            extra += [f"{cls}/{p.name}" for p in sorted(folder.iterdir())
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUFFIXES
                      and f"{cls}/{p.name}" not in listed]
    return extra


def check_street(root: Path, *, csv: str = "labels.csv", **_options) -> None:
    """Cheap (no decoding): the CSV, its columns, and the first image it names that is missing."""
    root = Path(root)
    csv_path, raw = _csv_rows(root, csv)
    for number, line, values in raw:
        name = _filename(values.get("filename", ""))
        if name is None:
            raise DataError(f"{csv_path} row {number} (line {line}): filename '{values.get('filename', '')}' must "
                            f"be a path relative to the root (expected layout {LAYOUT})")
        if not (root / name).is_file():
            raise DataError(f"{root / name}: image named in {csv_path} row {number} (line {line}) not found "
                            f"(expected layout {LAYOUT})")


def _image_size(image_size) -> int:
    if isinstance(image_size, bool) or not float(image_size).is_integer() or image_size < 0:
        raise DataError(f"option image_size must be a whole number >= 0 (0 = native size), got {image_size!r}")
    return int(image_size)


def _decode(path: Path, mode: str, size: int) -> np.ndarray:
    arr = load_image(path, mode)
    if size:
        arr = np.asarray(Image.fromarray(arr, mode).resize((size, size), Image.Resampling.BILINEAR))
    return to_chw(arr)


def read_street(ctx: ReadContext, *, csv: str = "labels.csv", image_size: int = 0, test_fraction: float = 0.2,
                require_coordinates: bool = False) -> Prepared:
    """Read the CSV-labelled class folders; ``image_size`` > 0 resizes every image to a square."""
    size = _image_size(image_size)
    if ctx.channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {ctx.channels}")
    mode = "RGB" if ctx.channels == 3 else "L"
    root = Path(ctx.root)
    csv_path, raw = _csv_rows(root, csv)
    rows = _parse_rows(root, csv_path, raw, bool(require_coordinates))
    extra = _unlisted(root, {r.filename for r in rows})
    if extra:
        shown = ", ".join(extra[:5]) + (f", ... ({len(extra)} in all)" if len(extra) > 5 else "")
        raise DataError(f"{root}: image file(s) in the class folders have no row in {csv_path}: {shown} "
                        f"(every image needs a row) (expected layout {LAYOUT})")
    for cls in CLASSES:
        if not any(r.label == cls for r in rows):
            raise DataError(f"{csv_path}: no images of class '{cls}'; both {' and '.join(CLASSES)} are needed "
                            f"(expected layout {LAYOUT})")
    rows.sort(key=lambda r: (CLASSES.index(r.label), r.filename))
    labels = np.array([CLASSES.index(r.label) for r in rows], dtype=np.int64)
    stems = [f"{r.label}/{Path(r.filename).stem}" for r in rows]
    split = assign_splits(stems, labels, float(test_fraction), ctx.seed)

    images = None
    sums = []
    first = None
    for i, row in enumerate(rows):
        path = root / row.filename
        sums.append(sha256_file(path))
        chw = _decode(path, mode, size)
        if images is None:
            first = row.filename
            images = np.empty((len(rows),) + chw.shape, dtype=np.uint8)
        elif chw.shape != images.shape[1:]:
            raise DataError(f"{path}: image size {chw.shape[2]}x{chw.shape[1]} differs from "
                            f"{images.shape[3]}x{images.shape[2]} of {first}; all images must have one size, "
                            f"or set the option image_size to resize them")
        images[i] = chw
    meta = {c: np.array([getattr(r, c) for r in rows], dtype=np.float64) for c in ("lat", "lon", "heading")}
    return Prepared(
        images=images, labels=labels, class_names=list(CLASSES),
        ids=[f"{s}/{stem}" for s, stem in zip(split, stems)], split=split,
        source=[r.filename for r in rows], sha256=sums, meta=meta,
        attrs={"csv": csv, "image_size": size, "size": list(images.shape[2:]), "test_fraction": float(test_fraction),
               "with_coordinates": int(np.isfinite(meta["lat"]).sum())})


def _per_class(counts) -> int:
    total = counts if isinstance(counts, int) else sum(int(v) for v in dict(counts).values())
    if total < 1:
        raise ValueError(f"street stand-in: counts must add up to at least 1 image per class, got {counts!r}")
    return total


def generate_street_standin(out: Path, *, counts: dict, seed: int, image_size: int = 128,
                            sign_area: tuple[float, float] = (0.02, 0.045), distractor_rate: float = 0.6,
                            quality: int = 90) -> None:
    """Write ``<out>/data`` in the street layout and the sign masks to ``<out>/masks``.

    ``counts``: images per class in total (the layout has no splits, so a per-split dict such as
    {train: 400, test: 50} is summed: 450 per class). Masks are written as
    ``<out>/masks/<class>/<stem>.png``, mirroring each image's path below the root, so they are
    found whichever split the reader assigns (see ``formats.mask_path``). Each image comes from
    its own seed (seed, class, index).
    """
    out = Path(out)
    n = _per_class(counts)
    lo, hi = (float(v) for v in sign_area)
    if not 0 < lo <= hi < 0.25:
        raise ValueError(f"street stand-in: sign_area must be 0 < low <= high < 0.25, got {sign_area!r}")
    data, masks = out / "data", out / "masks"
    centres = np.random.default_rng([seed, 7]).uniform([36.30, 127.33], [36.40, 127.43], size=(8, 2))
    rows = []
    for label, cls in enumerate(CLASSES):
        (data / cls).mkdir(parents=True, exist_ok=True)
        (masks / cls).mkdir(parents=True, exist_ok=True)
        for index in range(n):
            rng = np.random.default_rng([seed, label, index])
            image, mask = render_street(rng, cls == "hotspot", int(image_size), (lo, hi), float(distractor_rate))
            stem = f"{index:05d}"
            Image.fromarray(image, "RGB").save(data / cls / f"{stem}.jpg", quality=int(quality))
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(masks / cls / f"{stem}.png")
            # Fake coordinates around Daejeon: hotspots cluster around a few accident sites.
            geo = np.random.default_rng([seed, label, index, 1])
            if cls == "hotspot":
                lat, lon = centres[geo.integers(len(centres))] + geo.normal(0, 0.0015, 2)
            else:
                lat, lon = geo.uniform([36.28, 127.30], [36.42, 127.46])
            heading = "" if geo.uniform() < 0.05 else f"{round(geo.uniform(0, 360), 1) % 360:.1f}"
            rows.append([f"{cls}/{stem}.jpg", f"{lat:.6f}", f"{lon:.6f}", heading, cls])
    order = np.random.default_rng([seed, 11]).permutation(len(rows))  # real CSVs are not grouped by class
    with open(data / "labels.csv", "w", newline="") as f:
        writer = csvlib.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows[i] for i in order)


read_street = register_format(
    "street", layout=LAYOUT, check=check_street, standin=generate_street_standin, splits="assigned", dims=2,
    summary="Street View-style hotspot / non_hotspot images with a labels CSV (lat, lon, heading)")(read_street)
