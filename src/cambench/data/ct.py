"""Chest CT volumes: MosMedData-style NIfTI studies ("mosmed") and DICOM CT series ("dicom_ct"),
plus stand-ins written in those layouts from the synthetic chest phantom of
:mod:`cambench.data.ct_phantom`.

mosmed (MosMedData COVID19_1110)::

    <root>/studies/CT-{0,1,2,3,4}/study_XXXX.nii.gz     any subset of the five folders; .nii too
    <root>/masks/study_XXXX_mask.nii.gz                 optional lesion masks (non-zero = lesion)

dicom_ct::

    <root>/<class>/<series folder>/<slice files>        one folder = one series = one volume
    <root>/masks/<class>/<series folder>.nii.gz         optional, stored array in (D, H, W) order

Both produce ``(N, 1, D, H, W)`` uint8 volumes on the option ``grid``: HU resampled with torch
trilinear interpolation (:func:`volumes.resample`), then the HU ``window`` mapped onto 0..255
(:func:`volumes.window`). Neither layout has splits: they are assigned (``test_fraction``,
stratified, grouped by study or patient, :func:`formats.assign_splits`).

Array layout: index increases toward (superior, posterior, left) for mosmed (nibabel's closest
canonical orientation, see :data:`volumes.LAYOUT`); for dicom_ct D follows the slice normal
(ImageOrientationPatient row × column direction), H the rows and W the columns of the slices —
for a standard axial series ([1, 0, 0, 0, 1, 0]) the same layout as mosmed.
"""
from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .ct_phantom import chest_phantom
from .formats import DataError, Prepared, ReadContext, assign_splits, register_format, require, sha256_file
from .volumes import LAYOUT as ARRAY_LAYOUT
from .volumes import check_grid_window, load_nifti, load_nifti_oriented, resample, window

log = logging.getLogger("cambench")

GRID = [32, 64, 64]


def _volume_arrays(n: int, grid: list[int]) -> tuple[np.ndarray, ...]:
    """Output arrays of a CT reader: volumes, masks, mask_known, source spacing, source shape."""
    return (np.zeros((n, 1, *grid), np.uint8), np.zeros((n, *grid), bool), np.zeros(n, bool),
            np.zeros((n, 3), np.float64), np.zeros((n, 3), np.int64))
WINDOW = [-1000, 400]

MOSMED_LAYOUT = ("<root>/studies/CT-{0,1,2,3,4}/study_XXXX.nii.gz (any subset of the class folders; .nii too), "
                 "optional <root>/masks/study_XXXX_mask.nii.gz")
MOSMED_FOLDERS = [f"CT-{k}" for k in range(5)]
BINARY_CLASSES = ["normal", "covid"]  # index 0 = CT-0, 1 = CT-1..4 (CovidNet3D's MosMed labels)
LABEL_MODES = ("binary", "severity")

DICOM_LAYOUT = ("<root>/<class>/<series folder>/<DICOM slice files, any name>, optional "
                "<root>/masks/<class>/<series folder>.nii.gz (array in sorted (D, H, W) order)")
MASKS = "masks"             # reserved folder name in the dicom_ct root (not a class)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
POSITION_TOL_MM = 1e-3      # slices closer than this along the normal are duplicates


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------

def _nifti_stem(path: Path) -> str | None:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _nifti_of(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def _check_options(where: str, grid, window_, test_fraction) -> tuple:
    grid, win = check_grid_window(grid, window_, where)
    if not 0 < test_fraction < 1:
        raise DataError(f"{where}: option 'test_fraction' must be in (0, 1), got {test_fraction}")
    return grid, win


def _to_grid(hu: np.ndarray, grid, win) -> np.ndarray:
    return window(resample(hu, grid), *win)


@contextmanager
def _layout_hint(layout: str):
    """Add the expected layout to a DataError about one file that does not already name it."""
    try:
        yield
    except DataError as err:
        if "expected layout" in str(err):
            raise
        raise DataError(f"{err} (expected layout {layout})") from None


def _visible(folder: Path, dirs: bool) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p.is_dir() if dirs else p.is_file()))


# ------------------------------------------------------------------------------------------------
# mosmed
# ------------------------------------------------------------------------------------------------

def scan_mosmed(root: Path) -> list[tuple[str, str, Path]]:
    """(class folder, study stem, file) of every study, sorted by folder then file name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"mosmed root not found: {root} (expected layout {MOSMED_LAYOUT})")
    studies = require(root / "studies", MOSMED_LAYOUT, "studies folder not found")
    present = [c for c in MOSMED_FOLDERS if (studies / c).is_dir()]
    if not present:
        found = [p.name for p in _visible(studies, dirs=True)]
        raise DataError(f"{studies / 'CT-0'}: no class folder CT-0 … CT-4 found (present: {found or 'nothing'}; "
                        f"expected layout {MOSMED_LAYOUT})")
    items, seen = [], {}
    for folder in present:
        files = [(p, _nifti_stem(p)) for p in _visible(studies / folder, dirs=False)]
        files = [(p, s) for p, s in files if s is not None]
        if not files:
            raise DataError(f"{studies / folder}: no study_XXXX.nii.gz files in class folder '{folder}' "
                            f"(expected layout {MOSMED_LAYOUT})")
        for path, stem in files:
            if stem in seen:
                raise DataError(f"{path}: study '{stem}' also present as {seen[stem]}; study names must be unique")
            seen[stem] = path
            items.append((folder, stem, path))
    return items


def check_mosmed(root: Path, grid: list = GRID, window: list = WINDOW, labels: str = "binary",
                 test_fraction: float = 0.2) -> None:
    _check_options(f"format 'mosmed' ({root})", grid, window, test_fraction)
    if labels not in LABEL_MODES:
        raise DataError(f"format 'mosmed': option 'labels' must be one of {list(LABEL_MODES)}, got {labels!r}")
    scan_mosmed(root)


def generate_mosmed_standin(out: Path, *, counts: dict, seed: int, shape: list = [40, 80, 80],
                            spacing: list = [2.5, 0.8, 0.8], classes: list = ["CT-0", "CT-1"],
                            lesions: list = [2, 4], lesion_radius: list = [4.0, 8.0], noise: float = 20.0) -> None:
    """MosMed-layout stand-in in ``out/data``: int16 HU studies and a lesion mask for every study.

    ``counts``: the format has no splits, so the values are summed: that many studies per class
    (e.g. {train: 80, test: 20} → 100 per class; the reader assigns the splits). ``shape`` and
    ``spacing`` (mm) are (D, H, W) = (slices, rows, columns); the NIfTI files store the array as
    (x, y, z) with an LPS-style affine (diag(−sx, −sy, sz)), as converted scanner data often is.
    CT-0 studies are lesion-free (all-zero masks); a CT-k study gets k × (``lesions[0]`` ..
    ``lesions[1]``) ground-glass blobs of ``lesion_radius`` mm (see :func:`chest_phantom`).
    """
    import nibabel as nib
    bad = [c for c in classes if c not in MOSMED_FOLDERS]
    if bad or not classes:
        raise DataError(f"mosmed stand-in: classes must be among {MOSMED_FOLDERS}, got {list(classes)}")
    n = _standin_count(counts)
    data = Path(out) / "data"
    (data / "masks").mkdir(parents=True, exist_ok=True)
    spacing = [float(s) for s in spacing]
    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    affine[:3, 3] = [spacing[2] * shape[2] / 2, spacing[1] * shape[1] / 2, -spacing[0] * shape[0] / 2]
    number = 0
    for ci, cls in enumerate(classes):
        folder = data / "studies" / cls
        folder.mkdir(parents=True, exist_ok=True)
        severity = MOSMED_FOLDERS.index(cls)
        for i in range(n):
            number += 1
            rng = np.random.default_rng([seed, ci, i])
            k = severity * int(rng.integers(lesions[0], lesions[1] + 1))
            hu, mask = chest_phantom(rng, shape, spacing, n_lesions=k, lesion_radius=lesion_radius, noise=noise)
            stem = f"study_{number:04d}"
            for arr, path, dtype in ((hu, folder / f"{stem}.nii.gz", np.int16),
                                     (mask, data / "masks" / f"{stem}_mask.nii.gz", np.uint8)):
                img = nib.Nifti1Image(arr.transpose(2, 1, 0).astype(dtype), affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                img.header.set_xyzt_units("mm")
                nib.save(img, str(path))


@register_format("mosmed", layout=MOSMED_LAYOUT, check=check_mosmed, standin=generate_mosmed_standin,
                 splits="assigned", dims=3, id_masks=False,
                 summary="MosMedData COVID19_1110: NIfTI chest CT studies in CT-0..4 folders (+ lesion masks)")
def read_mosmed(ctx: ReadContext, *, grid: list = GRID, window: list = WINDOW, labels: str = "binary",
                test_fraction: float = 0.2) -> Prepared:
    """MosMed studies as ``(N, 1, *grid)`` uint8 volumes.

    ``labels``: "binary" → classes [normal, covid] (CT-0 → normal = 0, CT-1..4 → covid = 1, as in
    CovidNet3D); "severity" → one class per CT-k folder present, in order. ``meta``: category
    (CT-k), original spacing_z/y/x (mm) and shape_d/h/w (in the canonical (D, H, W) order, before
    resampling). ``mask_known`` marks the studies with a mask file; masks are resampled like the
    image and thresholded (:func:`volumes.resample` with ``mask=True``). Splits are grouped by study.
    """
    root = ctx.root
    grid, win = _check_options(f"format 'mosmed' ({root})", grid, window, test_fraction)
    if labels not in LABEL_MODES:
        raise DataError(f"format 'mosmed': option 'labels' must be one of {list(LABEL_MODES)}, got {labels!r}")
    items = scan_mosmed(root)
    if labels == "binary":
        class_names = list(BINARY_CLASSES)
        label_of = {f: int(f != "CT-0") for f in MOSMED_FOLDERS}
    else:
        class_names = sorted({f for f, _, _ in items}, key=MOSMED_FOLDERS.index)
        label_of = {f: class_names.index(f) for f in class_names}
    n = len(items)
    images, masks, known, spacing, shapes = _volume_arrays(n, grid)
    sums = []
    mask_dir = root / "masks"
    for i, (folder, stem, path) in enumerate(items):
        with _layout_hint(MOSMED_LAYOUT):
            hu, spacing[i], codes = load_nifti_oriented(path)
        sums.append(sha256_file(path))
        shapes[i] = hu.shape
        images[i, 0] = _to_grid(hu, grid, win)
        mask_path = _nifti_of(mask_dir, f"{stem}_mask") if mask_dir.is_dir() else None
        if mask_path is not None:
            with _layout_hint(MOSMED_LAYOUT):
                mask, _, mask_codes = load_nifti_oriented(mask_path)
            if mask.shape != hu.shape:
                raise DataError(f"{mask_path}: mask shape {mask.shape} differs from its study {path.name} "
                                f"{hu.shape} (both in canonical (D, H, W) order)")
            if mask_codes != codes:
                log.warning("%s: mask orientation %s differs from its study's %s; each is reoriented by its "
                            "own affine", mask_path, "".join(mask_codes), "".join(codes))
            masks[i] = resample(mask, grid, mask=True)
            known[i] = True
    labels_arr = np.array([label_of[f] for f, _, _ in items], dtype=np.int64)
    split = assign_splits([stem for _, stem, _ in items], labels_arr, test_fraction, ctx.seed)
    names = [class_names[y] for y in labels_arr]
    return Prepared(
        images=images, labels=labels_arr, class_names=class_names,
        ids=[f"{s}/{c}/{stem}" for s, c, (_, stem, _) in zip(split, names, items)],
        split=split, source=[str(p.relative_to(root)) for _, _, p in items], sha256=sums,
        masks=masks if known.any() else None, mask_known=known if known.any() else None,
        meta={"category": np.array([f for f, _, _ in items], dtype=object),
              "spacing_z": spacing[:, 0], "spacing_y": spacing[:, 1], "spacing_x": spacing[:, 2],
              "shape_d": shapes[:, 0], "shape_h": shapes[:, 1], "shape_w": shapes[:, 2]},
        attrs={"grid": list(grid), "window": list(win), "labels": labels, "layout": ARRAY_LAYOUT,
               "masks_known": int(known.sum())})


# ------------------------------------------------------------------------------------------------
# dicom_ct
# ------------------------------------------------------------------------------------------------

def _slice_files(folder: Path) -> list[Path]:
    """Every visible file of a series folder is a slice, whatever its suffix (DICOM files are often
    named by UID or number without ``.dcm``); hidden files and a DICOMDIR are skipped."""
    return [p for p in _visible(folder, dirs=False) if p.name.upper() != "DICOMDIR"]


def scan_dicom(root: Path) -> tuple[list[str], list[tuple[str, Path]]]:
    """Class names (sorted folder names, ``masks`` excluded) and (class, series folder) pairs."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dicom_ct root not found: {root} (expected layout {DICOM_LAYOUT})")
    classes = [p.name for p in _visible(root, dirs=True) if p.name != MASKS]
    if not classes:
        raise DataError(f"{root}: no class folders (expected layout {DICOM_LAYOUT})")
    items = []
    for cls in classes:
        series = _visible(root / cls, dirs=True)
        if not series:
            raise DataError(f"{root / cls}: class '{cls}' has no series folders (expected layout {DICOM_LAYOUT})")
        for folder in series:
            if not _slice_files(folder):
                raise DataError(f"{folder}: series folder has no slice files (expected layout {DICOM_LAYOUT})")
            items.append((cls, folder))
    return classes, items


def check_dicom_ct(root: Path, grid: list = GRID, window: list = WINDOW, test_fraction: float = 0.2) -> None:
    _check_options(f"format 'dicom_ct' ({root})", grid, window, test_fraction)
    scan_dicom(root)


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _read_dicom(path: Path):
    """A DICOM file; one without the 128-byte preamble + "DICM" (older writers) is accepted when,
    read anyway, it holds an image (Rows, Columns, PixelData)."""
    import pydicom
    from pydicom import uid
    from pydicom.errors import InvalidDicomError
    not_dicom = DataError(f"{path}: not a DICOM file; every file in a series folder must be a slice "
                          f"(expected layout {DICOM_LAYOUT})")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: cannot read DICOM file ({type(err).__name__}: {err})") from None
    try:
        ds = pydicom.dcmread(path, force=True)
        if all(tag in ds for tag in ("Rows", "Columns", "PixelData")):
            if "TransferSyntaxUID" not in ds.file_meta:  # the pixel decoder needs it: the encoding read
                implicit, little = ds.original_encoding
                ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                                  uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
            return ds
    except Exception:  # a non-DICOM file read by force can fail in many ways  # noqa: BLE001
        pass
    raise not_dicom from None


def read_series(folder: Path) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """One DICOM series folder as float32 HU ``(D, H, W)``, its spacing (z, y, x) mm and header facts.

    Slices are sorted by their position along the slice normal (ImagePositionPatient ·
    (row × column direction of ImageOrientationPatient)); when a slice lacks either tag, by
    InstanceNumber. HU = stored pixel × RescaleSlope + RescaleIntercept, per slice (defaults 1, 0).
    Spacing: PixelSpacing (row spacing → y, column spacing → x; NaN when absent) and the median gap
    between sorted slice positions (else SpacingBetweenSlices or SliceThickness, else NaN).
    """
    folder = Path(folder)
    slices = []
    for path in _slice_files(folder):
        ds = _read_dicom(path)
        if "PixelData" not in ds:
            raise DataError(f"{path}: DICOM file without pixel data (not an image slice)")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DataError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames) is not supported; "
                            f"expected one slice per file")
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if slices:
            first = slices[0]
            if uid != first["uid"]:
                raise DataError(f"{path}: SeriesInstanceUID {uid or '(none)'} differs from {first['uid'] or '(none)'} "
                                f"of {first['path'].name}; a series folder must hold exactly one series")
            if size != first["size"]:
                raise DataError(f"{path}: {size[0]}x{size[1]} (Rows x Columns) differs from {first['size'][0]}x"
                                f"{first['size'][1]} of {first['path'].name}; mixed Rows/Columns in one series")
        try:
            pixels = ds.pixel_array
        except Exception as err:  # decoder plug-ins raise their own types  # noqa: BLE001
            raise DataError(f"{path}: cannot decode the pixel data ({type(err).__name__}: {err})") from None
        if pixels.ndim != 2 or pixels.shape != size:
            raise DataError(f"{path}: expected one grayscale {size[0]}x{size[1]} slice, got pixel array "
                            f"{pixels.shape}")
        slope = ds.get("RescaleSlope", None)
        intercept = ds.get("RescaleIntercept", None)
        slope = 1.0 if slope in (None, "") else float(slope)
        intercept = 0.0 if intercept in (None, "") else float(intercept)
        instance = ds.get("InstanceNumber", None)
        slices.append({
            "path": path, "uid": uid, "size": size, "sha": sha256_file(path),
            "hu": (pixels.astype(np.float64) * slope + intercept).astype(np.float32),
            "ipp": _floats(ds.get("ImagePositionPatient", None) or [], 3),
            "iop": _floats(ds.get("ImageOrientationPatient", None) or [], 6),
            "instance": None if instance in (None, "") else int(instance),
            "pixel_spacing": _floats(ds.get("PixelSpacing", None) or [], 2),
            "gap": ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None),
            "patient": str(ds.get("PatientID", "") or ""),
        })
    if not slices:
        raise DataError(f"{folder}: series folder has no slice files (expected layout {DICOM_LAYOUT})")

    if all(s["ipp"] is not None and s["iop"] is not None for s in slices):
        iop = slices[0]["iop"]
        for s in slices[1:]:
            if not np.allclose(s["iop"], iop, atol=1e-4):
                raise DataError(f"{s['path']}: ImageOrientationPatient {s['iop'].tolist()} differs from "
                                f"{iop.tolist()} of {slices[0]['path'].name}; one series has one orientation")
        normal = np.cross(iop[:3], iop[3:])
        keys = np.array([float(np.dot(s["ipp"], normal)) for s in slices])
        order = np.argsort(keys, kind="stable")
        tol, what = POSITION_TOL_MM, "slice position along the normal"
    else:
        missing = [s for s in slices if s["instance"] is None]
        if missing:
            raise DataError(f"{missing[0]['path']}: no ImagePositionPatient/ImageOrientationPatient in the "
                            f"series and no InstanceNumber; cannot order the slices")
        keys = np.array([float(s["instance"]) for s in slices])
        order = np.argsort(keys, kind="stable")
        tol, what = 0.5, "InstanceNumber"
    for a, b in zip(order[:-1], order[1:]):
        if keys[b] - keys[a] < tol:
            raise DataError(f"{slices[b]['path']}: duplicate {what} {keys[b]:g} (same as "
                            f"{slices[a]['path'].name}); one series may not repeat a slice")
    ordered = [slices[i] for i in order]
    if len(ordered) > 1 and what != "InstanceNumber":
        dz = float(np.median(np.diff(keys[order])))
    else:
        gap = ordered[0]["gap"]
        dz = float(gap) if gap not in (None, "") else float("nan")
    ps = ordered[0]["pixel_spacing"]
    dy, dx = (float(ps[0]), float(ps[1])) if ps is not None else (float("nan"), float("nan"))
    volume = np.stack([s["hu"] for s in ordered])
    digest = hashlib.sha256("".join(f"{s['path'].name}:{s['sha']}\n" for s in ordered).encode()).hexdigest()
    info = {"series_uid": ordered[0]["uid"], "patient_id": ordered[0]["patient"], "sha256": digest,
            "files": [s["path"] for s in ordered]}
    return volume, (dz, dy, dx), info


def generate_dicom_ct_standin(out: Path, *, counts: dict, seed: int, classes: list = ["covid", "normal"],
                              normal_class: str = "normal", shape: list = [40, 80, 80],
                              spacing: list = [2.5, 0.8, 0.8], lesions: list = [2, 4],
                              lesion_radius: list = [4.0, 8.0], noise: float = 20.0, suffix: str = ".dcm") -> None:
    """DICOM-series stand-in in ``out/data``: ``<class>/series_XXXX/slice_YYY.dcm`` + NIfTI masks.

    ``counts``: values summed → series per class (one patient each). Every class except
    ``normal_class`` has lesions (:func:`chest_phantom`, as in the mosmed stand-in's CT-1). Slices
    are valid CT Image Storage files (explicit VR little endian, uint16 stored = HU + 1024,
    RescaleIntercept −1024, RescaleSlope 1), axial ([1, 0, 0, 0, 1, 0]), written in shuffled
    InstanceNumber order to the files so that sorting is exercised. ``suffix``: file name suffix
    ("" writes suffix-less files). Masks ``masks/<class>/series_XXXX.nii.gz`` hold the (D, H, W)
    array with an affine giving its true patient (RAS) position.
    """
    import nibabel as nib
    if not classes or len(set(classes)) != len(classes) or MASKS in classes:
        raise DataError(f"dicom_ct stand-in: classes must be distinct names other than '{MASKS}', got {list(classes)}")
    n = _standin_count(counts)
    data = Path(out) / "data"
    sz, sy, sx = (float(s) for s in spacing)
    origin = np.array([-sx * shape[2] / 2, -sy * shape[1] / 2, -sz * shape[0] / 2])  # LPS, mm
    number = 0
    for ci, cls in enumerate(classes):
        for i in range(n):
            number += 1
            rng = np.random.default_rng([seed, ci, i])
            k = 0 if cls == normal_class else int(rng.integers(lesions[0], lesions[1] + 1))
            hu, mask = chest_phantom(rng, shape, spacing, n_lesions=k, lesion_radius=lesion_radius, noise=noise)
            name = f"series_{number:04d}"
            write_ct_series(data / cls / name, hu, (sz, sy, sx), origin=origin, seed=seed,
                            patient_id=f"PAT{number:04d}", key=f"{cls}/{name}", rng=rng, suffix=suffix)
            (data / MASKS / cls).mkdir(parents=True, exist_ok=True)
            affine = np.zeros((4, 4))
            affine[:3, 0] = [0, 0, sz]            # D: along the slice normal (superior)
            affine[:3, 1] = [0, -sy, 0]           # H: rows, toward posterior (−y in RAS)
            affine[:3, 2] = [-sx, 0, 0]           # W: columns, toward left (−x in RAS)
            affine[:3, 3] = origin * [-1, -1, 1]
            affine[3, 3] = 1
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(data / MASKS / cls / f"{name}.nii.gz"))


def write_ct_series(folder: Path, hu: np.ndarray, spacing, *, origin=(0.0, 0.0, 0.0), seed: int = 0,
                    patient_id: str = "PAT0001", key: str = "", rng: np.random.Generator | None = None,
                    suffix: str = ".dcm") -> list[Path]:
    """Write a ``(D, H, W)`` HU volume as an axial DICOM CT series (one file per slice) in ``folder``.

    Slice d sits at ImagePositionPatient ``origin + (0, 0, d · spacing[0])`` (LPS, mm). UIDs derive
    from (seed, key), so the same call writes the same files. ``rng`` shuffles the file order.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d_count, rows, cols = hu.shape
    sz, sy, sx = (float(s) for s in spacing)
    stored = np.clip(np.rint(hu) + 1024, 0, 65535).astype(np.uint16)
    study_uid = generate_uid(entropy_srcs=[str(seed), key, "study"])
    series_uid = generate_uid(entropy_srcs=[str(seed), key, "series"])
    frame_uid = generate_uid(entropy_srcs=[str(seed), key, "frame"])
    files_order = rng.permutation(d_count) if rng is not None else np.arange(d_count)
    paths = []
    for file_index, d in enumerate(files_order.tolist()):
        sop_uid = generate_uid(entropy_srcs=[str(seed), key, "slice", str(d)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = f"Standin^{patient_id}"
        ds.PatientID = patient_id
        ds.StudyDate = ds.SeriesDate = "20240101"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = d + 1
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + d * sz]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.KVP = 120
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(stored[d]).tobytes()
        path = folder / f"slice_{file_index + 1:03d}{suffix}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


@register_format("dicom_ct", layout=DICOM_LAYOUT, check=check_dicom_ct, standin=generate_dicom_ct_standin,
                 splits="assigned", dims=3, id_masks=False,
                 summary="DICOM CT series, one folder per volume under class folders (+ NIfTI masks)")
def read_dicom_ct(ctx: ReadContext, *, grid: list = GRID, window: list = WINDOW,
                  test_fraction: float = 0.2) -> Prepared:
    """DICOM CT series as ``(N, 1, *grid)`` uint8 volumes (see :func:`read_series`).

    Classes: the class folder names, sorted. Masks ``masks/<class>/<series>.nii[.gz]`` are read as
    stored (no reorientation; the affine is ignored): the array must have the sorted series' shape
    (slices, Rows, Columns). Splits are grouped by PatientID (by series where it is empty), so the
    series of one patient share a split. ``source`` is the series folder; ``sha256`` hashes the
    sorted (file name, file checksum) list. ``meta``: patient_id, series_uid, slices (file count),
    spacing_z/y/x (mm) and shape_d/h/w before resampling.
    """
    root = ctx.root
    grid, win = _check_options(f"format 'dicom_ct' ({root})", grid, window, test_fraction)
    classes, items = scan_dicom(root)
    n = len(items)
    images, masks, known, spacing, shapes = _volume_arrays(n, grid)
    sums, groups, patients, uids = [], [], [], []
    for i, (cls, folder) in enumerate(items):
        with _layout_hint(DICOM_LAYOUT):
            hu, spacing[i], info = read_series(folder)
        shapes[i] = hu.shape
        images[i, 0] = _to_grid(hu, grid, win)
        sums.append(info["sha256"])
        patients.append(info["patient_id"])
        uids.append(info["series_uid"])
        groups.append(f"patient:{info['patient_id']}" if info["patient_id"] else f"series:{cls}/{folder.name}")
        mask_path = _nifti_of(root / MASKS / cls, folder.name) if (root / MASKS / cls).is_dir() else None
        if mask_path is not None:
            with _layout_hint(DICOM_LAYOUT):
                mask, _ = load_nifti(mask_path, canonical=False)
            if mask.shape != hu.shape:
                raise DataError(f"{mask_path}: mask array {mask.shape} differs from its series {folder} "
                                f"{hu.shape} (slices, Rows, Columns); masks are stored in sorted (D, H, W) order")
            masks[i] = resample(mask, grid, mask=True)
            known[i] = True
    labels = np.array([classes.index(c) for c, _ in items], dtype=np.int64)
    split = assign_splits(groups, labels, test_fraction, ctx.seed)
    return Prepared(
        images=images, labels=labels, class_names=list(classes),
        ids=[f"{s}/{c}/{f.name}" for s, (c, f) in zip(split, items)], split=split,
        source=[str(f.relative_to(root)) for _, f in items], sha256=sums,
        masks=masks if known.any() else None, mask_known=known if known.any() else None,
        meta={"patient_id": np.array(patients, dtype=object), "series_uid": np.array(uids, dtype=object),
              "spacing_z": spacing[:, 0], "spacing_y": spacing[:, 1], "spacing_x": spacing[:, 2],
              "shape_d": shapes[:, 0], "shape_h": shapes[:, 1], "shape_w": shapes[:, 2]},
        attrs={"grid": list(grid), "window": list(win),
               "layout": "(D, H, W) = (sorted along the slice normal, rows, columns)",
               "masks_known": int(known.sum())})


# ------------------------------------------------------------------------------------------------
# Stand-in counts (the phantom itself is in ct_phantom.py)
# ------------------------------------------------------------------------------------------------

def _standin_count(counts: dict) -> int:
    if not counts or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1
                             for v in counts.values()):
        raise DataError(f"stand-in counts must be positive integers, got {counts!r}")
    return int(sum(counts.values()))
