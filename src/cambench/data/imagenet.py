"""ILSVRC (ImageNet) validation images with their bounding boxes, and a stand-in in the same layout.

Layouts read (detected from the files):

    folders: <root>/<wnid>/<stem>.JPEG      label = the folder name
    flat:    <root>/<stem>.JPEG             label = the class of the image's first annotated object

Annotations (option ``annotations``): ILSVRC's ``LOC_val_solution.csv`` (``ImageId,PredictionString``,
the string ``wnid x_min y_min x_max y_max`` once per object), or a folder of Pascal VOC XML files
``<ann>/<stem>.xml`` or ``<ann>/<wnid>/<stem>.xml`` (ILSVRC's Annotations/CLS-LOC/val). Coordinates are
inclusive pixel indices counted from ``box_origin`` (0 in our reading of ILSVRC, 1 for Pascal VOC
proper): a box covers pixel edges (min - origin, max - origin + 1). Boxes are checked against the
decoded image, then follow the resize / crop of the set; the mask of an image is the union of the
boxes of its own class.

The class mapping (config ``datasets.<name>.classes``, e.g. LOC_synset_mapping.txt) gives the model's
class order; without one the classes are the folders (folders layout) or the annotated wnids (flat).
"""
from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .formats import DataError, Prepared, ReadContext, read_image_files, register_format, require, sha256_file
from .imagefolder import IMAGE_SUFFIXES
from .preprocess import boxes_mask, geometry, transform_boxes
from .synthetic import SHAPES, draw_object, saturated_colour

LAYOUT = ("<root>/<wnid>/<stem>.JPEG or <root>/<stem>.JPEG, boxes in <root>/LOC_val_solution.csv "
          "(ImageId,PredictionString) or <root>/annotations/[<wnid>/]<stem>.xml (Pascal VOC)")
SOLUTION_CSV = "LOC_val_solution.csv"
XML_FOLDER = "annotations"
SYNSET_MAPPING = "LOC_synset_mapping.txt"


@dataclass
class Annotation:
    where: str                                           # the file (and line) it came from, for messages
    objects: list[tuple[str, float, float, float, float]]  # (wnid, x_min, y_min, x_max, y_max) as written


# ------------------------------------------------------------------------------------------------
# Layout and annotations
# ------------------------------------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def annotation_source(root: Path, annotations: str) -> Path | None:
    """The annotation file or folder the option names ('auto': the CSV, else annotations/, else none)."""
    if annotations in ("", "none"):
        return None
    if annotations == "auto":
        for candidate in (root / SOLUTION_CSV, root / XML_FOLDER):
            if candidate.exists():
                return candidate
        return None
    return require(root / annotations, LAYOUT, "annotations not found (option 'annotations': "
                                               "LOC_val_solution.csv or a folder of Pascal VOC XML)")


def scan(root: Path, skip: Path | None) -> tuple[str, list[tuple[str | None, Path]]]:
    """The layout ('folders' or 'flat') and its (wnid or None, image file) pairs, sorted."""
    if not root.is_dir():
        raise DataError(f"ImageNet folder not found: {root} (expected layout {LAYOUT})")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    flat = [p for p in entries if _is_image(p)]
    folders = []
    for folder in (p for p in entries if p.is_dir() and p != skip and p.name != XML_FOLDER):
        files = sorted(p for p in folder.iterdir() if _is_image(p))
        folders += [(folder.name, p) for p in files]  # a folder without images (e.g. of XML) is no class
    if flat and folders:
        raise DataError(f"{root}: holds both image files ({flat[0].name}) and class folders of images "
                        f"({folders[0][1].relative_to(root)}); expected one layout: {LAYOUT}")
    if not flat and not folders:
        raise DataError(f"{root}: no images found (expected layout {LAYOUT})")
    return ("flat", [(None, p) for p in flat]) if flat else ("folders", folders)


def _number(text: str | None, what: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise DataError(f"{where}: {what} is {text!r}; expected a number (a pixel index)")
    return value


def read_solution_csv(path: Path) -> dict[str, Annotation]:
    """ILSVRC's LOC_val_solution.csv: image stem -> its objects."""
    out: dict[str, Annotation] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if [h.strip() for h in header or []] != ["ImageId", "PredictionString"]:
                raise DataError(f"{path}:1: header {header} is not 'ImageId,PredictionString' (expected "
                                f"ILSVRC's LOC_val_solution.csv)")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row:
                    continue
                if len(row) != 2:
                    raise DataError(f"{where}: {len(row)} fields; expected 'ImageId,PredictionString'")
                stem, tokens = row[0].strip(), row[1].split()
                if not tokens or len(tokens) % 5:
                    raise DataError(f"{where}: PredictionString has {len(tokens)} words; expected 'wnid x_min "
                                    f"y_min x_max y_max' once per object (a multiple of 5, at least 5)")
                if stem in out:
                    raise DataError(f"{where}: image '{stem}' repeats {out[stem].where}")
                objects = []
                for k in range(0, len(tokens), 5):
                    wnid, *coords = tokens[k:k + 5]
                    objects.append((wnid, *(_number(c, name, where) for c, name in
                                            zip(coords, ("x_min", "y_min", "x_max", "y_max")))))
                out[stem] = Annotation(where, objects)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the annotation CSV ({err}) (expected ILSVRC's "
                        f"LOC_val_solution.csv)") from None
    return out


def index_xml(folder: Path) -> dict[str, Path]:
    """Image stem -> its XML file, from <folder>/<stem>.xml and <folder>/<wnid>/<stem>.xml."""
    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.xml")) + sorted(folder.glob("*/*.xml")):
        if path.stem in out:
            raise DataError(f"{path}: a second annotation of image '{path.stem}' (the first: {out[path.stem]})")
        out[path.stem] = path
    return out


def read_voc_xml(path: Path) -> Annotation:
    """One Pascal VOC / ILSVRC annotation file: <annotation><object><name>, <bndbox><xmin>..."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as err:
        raise DataError(f"{path}: cannot parse the annotation XML ({err}) (expected Pascal VOC XML: "
                        f"<annotation><object><name>wnid</name><bndbox><xmin>...)") from None
    objects = []
    for k, obj in enumerate(tree.getroot().iter("object")):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if not name or not name.strip() or box is None:
            raise DataError(f"{path}: object {k} lacks <name> or <bndbox> (expected Pascal VOC XML)")
        objects.append((name.strip(), *(_number(box.findtext(tag), f"object {k} <{tag}>", str(path))
                                        for tag in ("xmin", "ymin", "xmax", "ymax"))))
    if not objects:
        raise DataError(f"{path}: no <object> in the annotation (expected at least one annotated object)")
    return Annotation(str(path), objects)


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------

def _check_options(split, boxes) -> None:
    if not isinstance(split, str) or not split.strip() or "/" in split:
        raise DataError(f"format 'imagenet' option 'split': a split name such as 'val', got {split!r}")
    if boxes not in ("required", "optional"):
        raise DataError(f"format 'imagenet' option 'boxes': 'required' or 'optional', got {boxes!r}")


def check_imagenet(root: Path, *, split: str = "val", annotations: str = "auto", boxes: str = "required",
                   box_origin: int = 0) -> None:
    """Cheap: the options, the layout (directory listings) and the annotation source's presence."""
    _check_options(split, boxes)
    root = Path(root)
    require(root, LAYOUT, "ImageNet folder not found")
    source = annotation_source(root, annotations)
    layout, _ = scan(root, source)
    if layout == "flat" and source is None:
        raise DataError(f"{root}: images lie directly in the folder (flat layout) but there are no annotations "
                        f"to give their classes (option annotations = {annotations!r}; expected {SOLUTION_CSV} or "
                        f"{XML_FOLDER}/ there, or class folders <wnid>/; expected layout {LAYOUT})")


def _annotations(source: Path | None, items, need_all: bool) -> list[Annotation | None]:
    """Each item's annotation (None without one; an error where every image needs one)."""
    if source is None:
        return [None] * len(items)
    by_stem = read_solution_csv(source) if source.is_file() else None
    xml = index_xml(source) if by_stem is None else {}
    out = []
    for _, path in items:
        if by_stem is not None:
            found = by_stem.get(path.stem)
        else:
            found = read_voc_xml(xml[path.stem]) if path.stem in xml else None
        if found is None and need_all:
            raise DataError(f"{path}: no annotation for image '{path.stem}' in {source} (every image needs one: "
                            f"{'a row' if by_stem is not None else f'{path.stem}.xml'}; option boxes: optional "
                            f"allows images without boxes)")
        out.append(found)
    return out


def _edges(obj, origin: int, where: str, image: Path, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(y0, x0, y1, x1) pixel edges of an annotated object, which must lie inside its image."""
    wnid, xmin, ymin, xmax, ymax = obj
    y0, x0, y1, x1 = ymin - origin, xmin - origin, ymax - origin + 1, xmax - origin + 1
    height, width = size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise DataError(f"{where}: box of '{wnid}' (x_min {xmin:g}, y_min {ymin:g}, x_max {xmax:g}, y_max {ymax:g}) "
                        f"lies outside its image {image} of {width}x{height} pixels (coordinates are inclusive "
                        f"pixel indices from box_origin {origin}: 0..{width - 1 + origin} across, "
                        f"0..{height - 1 + origin} down; the minimum must not exceed the maximum)")
    return y0, x0, y1, x1


# ------------------------------------------------------------------------------------------------
# The stand-in
# ------------------------------------------------------------------------------------------------

def wnid(k: int) -> str:
    return f"n{k:08d}"


def render_image(rng: np.random.Generator, shape: str, height: int, width: int,
                 n_objects: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """(H, W, 3) uint8 and the (x_min, y_min, x_max, y_max) inclusive pixel box of each planted object."""
    c0, c1 = rng.uniform(0.15, 0.75, size=(2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    t = np.cos(theta) * xx / width + np.sin(theta) * yy / height
    t = (t - t.min()) / (np.ptp(t) + 1e-9)
    image = Image.fromarray(((c0 * (1 - t[..., None]) + c1 * t[..., None]) * 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    boxes = []
    for _ in range(n_objects):
        r = rng.uniform(0.12, 0.28) * min(height, width)
        cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
        angle = rng.uniform(0, 2 * np.pi)
        draw_object(draw, shape, cx, cy, r, angle, saturated_colour(rng))
        footprint = Image.new("L", (width, height), 0)
        draw_object(ImageDraw.Draw(footprint), shape, cx, cy, r, angle, 255)
        rows, cols = np.nonzero(np.asarray(footprint))
        boxes.append((int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())))
    arr = np.asarray(image, np.float32) + rng.normal(0, 6, (height, width, 3))
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8), boxes


def _voc_xml(stem: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> bytes:
    """ILSVRC's annotation XML (Pascal VOC structure)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "val"
    ET.SubElement(root, "filename").text = stem
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "ILSVRC_2012"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        for tag, value in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            ET.SubElement(obj, tag).text = str(value)
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, "\t")
    return ET.tostring(root, encoding="utf-8")


def generate_imagenet_standin(out: Path, *, counts: dict, seed: int, layout: str = "flat", annotations: str = "csv",
                              n_classes: int = 1000, present: int = 4, min_size: int = 72,
                              max_size: int = 160) -> None:
    """ILSVRC val in its real layout under ``out/data``: ``counts = {"val": images per class}`` of
    ``present`` classes out of a mapping of ``n_classes`` wnids ``n%08d`` (LOC_synset_mapping.txt),
    JPEGs ``ILSVRC2012_val_%08d.JPEG`` of mixed sizes (width and height in [min_size, max_size]), each
    with one or two planted shapes of its class (the shape follows the class) whose boxes are the
    annotation: LOC_val_solution.csv (``annotations="csv"``) or annotations/<stem>.xml ("xml"), box_origin 0.
    ``layout``: "flat" (<data>/<stem>.JPEG) or "folders" (<data>/<wnid>/<stem>.JPEG)."""
    if len(counts) != 1:
        raise ValueError(f"imagenet stand-in: counts names one split (ILSVRC val, e.g. {{'val': 4}}), got {counts}")
    if layout not in ("flat", "folders") or annotations not in ("csv", "xml"):
        raise ValueError(f"imagenet stand-in: layout 'flat' or 'folders' and annotations 'csv' or 'xml', "
                         f"got {layout!r}, {annotations!r}")
    if not 1 <= present <= n_classes or not 16 <= min_size <= max_size:
        raise ValueError(f"imagenet stand-in: need 1 <= present ({present}) <= n_classes ({n_classes}) and "
                         f"16 <= min_size ({min_size}) <= max_size ({max_size})")
    per_class = int(next(iter(counts.values())))
    data = Path(out) / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / SYNSET_MAPPING).write_text("".join(f"{wnid(k)} class {k}\n" for k in range(n_classes)))
    rng = np.random.default_rng([seed, 1000])
    chosen = np.sort(rng.choice(n_classes, present, replace=False))
    order = rng.permutation(np.repeat(chosen, per_class))  # classes interleaved, as in ILSVRC val
    rows = ["ImageId,PredictionString\n"]
    for number, k in enumerate(order.tolist(), start=1):
        stem = f"ILSVRC2012_val_{number:08d}"
        image_rng = np.random.default_rng([seed, number])
        height, width = (int(v) for v in image_rng.integers(min_size, max_size + 1, 2))
        image, boxes = render_image(image_rng, SHAPES[k % len(SHAPES)], height, width,
                                    int(image_rng.integers(1, 3)))
        folder = data / wnid(k) if layout == "folders" else data
        folder.mkdir(exist_ok=True)
        Image.fromarray(image, "RGB").save(folder / f"{stem}.JPEG", "JPEG", quality=90)
        if annotations == "csv":
            rows.append(f"{stem},{' '.join(f'{wnid(k)} {x0} {y0} {x1} {y1}' for x0, y0, x1, y1 in boxes)} \n")
        else:
            (data / XML_FOLDER).mkdir(exist_ok=True)
            (data / XML_FOLDER / f"{stem}.xml").write_bytes(
                _voc_xml(stem, width, height, [(wnid(k), b) for b in boxes]))
    if annotations == "csv":
        (data / SOLUTION_CSV).write_text("".join(rows))



@register_format("imagenet", layout=LAYOUT, check=check_imagenet, standin=generate_imagenet_standin,
                 splits="native", dims=2, id_masks=False,
                 resizes=True, bounds={"boxes": ("required", "optional"), "box_origin": "int [0, 1]"},
                 summary="ILSVRC val: <wnid>/ folders or flat JPEGs, boxes from LOC_val_solution.csv or VOC XML")
def read_imagenet(ctx: ReadContext, *, split: str = "val", annotations: str = "auto", boxes: str = "required",
                  box_origin: int = 0) -> Prepared:
    """The one split ``split``; labels from the folders or the annotations, boxes and box masks."""
    _check_options(split, boxes)
    if ctx.channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {ctx.channels}")
    root = Path(ctx.root)
    source = annotation_source(root, annotations)
    layout, items = scan(root, source)
    notes = _annotations(source, items, need_all=boxes == "required" or layout == "flat")
    # Classes: the mapping's names where given; without one the folders bound the annotations.
    folders = sorted({wnid for wnid, _ in items if wnid is not None})
    known, against = (set(ctx.classes), "the class mapping (datasets.<name>.classes)") if ctx.classes else \
        (set(folders), f"the class folders of {root}") if layout == "folders" else (None, "")
    for note in notes:
        for wnid, *_ in note.objects if note else ():
            if known is not None and wnid not in known:
                raise DataError(f"{note.where}: annotated class '{wnid}' is not in {against}")
    wnids = [wnid if wnid is not None else note.objects[0][0] for (wnid, _), note in zip(items, notes)]
    class_names = sorted(set(folders) | {o[0] for note in notes if note for o in note.objects})
    index = {name: i for i, name in enumerate(class_names)}

    paths = [p for _, p in items]
    images, sizes = read_image_files(paths, "RGB" if ctx.channels == 3 else "L", ctx.resize, ctx.crop)
    size = images.shape[2:]
    all_boxes, box_image, box_label = [], [], []
    masks = np.zeros((len(items), *size), bool) if source is not None else None
    for i, (path, note) in enumerate(zip(paths, notes)):
        if note is None:
            continue
        edges = np.array([_edges(o, box_origin, note.where, path, tuple(sizes[i])) for o in note.objects])
        geo = geometry(int(sizes[i][0]), int(sizes[i][1]), ctx.resize, ctx.crop)
        placed, keep = transform_boxes(edges, geo)
        labels = np.array([index[o[0]] for o in note.objects], np.int64)[keep]
        masks[i] = boxes_mask(placed[labels == index[wnids[i]]], size)
        all_boxes.append(placed)
        box_image.append(np.full(len(placed), i, np.int64))
        box_label.append(labels)
    known_masks = np.array([note is not None for note in notes])
    return Prepared(
        images=images, labels=np.array([index[w] for w in wnids], np.int64), class_names=class_names,
        ids=[f"{split}/{w}/{p.stem}" for w, p in zip(wnids, paths)], split=[split] * len(items),
        source=[str(p.relative_to(root)) for p in paths], sha256=[sha256_file(p) for p in paths],
        masks=masks, mask_known=None if masks is None or known_masks.all() else known_masks,
        meta={"orig_height": sizes[:, 0], "orig_width": sizes[:, 1]},
        boxes=np.concatenate(all_boxes) if all_boxes else (np.zeros((0, 4), np.float32) if source else None),
        box_image=np.concatenate(box_image) if box_image else (np.zeros(0, np.int64) if source else None),
        box_label=np.concatenate(box_label) if box_label else (np.zeros(0, np.int64) if source else None),
        attrs={"layout": layout, "annotations": str(source.relative_to(root) if source and source.is_relative_to(root)
                                                    else source or ""),
               "boxes": boxes, "box_origin": int(box_origin), "resize": ctx.resize, "crop": ctx.crop})
