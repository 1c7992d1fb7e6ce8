"""BraTS 2021 Task 1 case folders ("brats"), read as AME-CAM's axial slices or as whole volumes,
and a synthetic stand-in written in the same layout.

Layout read (the official training data, one folder per case)::

    <root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz        (.nii is accepted too)
    e.g. BraTS2021_00000/BraTS2021_00000_flair.nii.gz

Every sub-folder of ``<root>`` (not starting with ".") is a case; files beside them (e.g. a name
mapping CSV) are ignored. Only the configured ``modalities`` and the seg file are needed. Real
volumes are 240×240×155, 1 mm isotropic, skull-stripped and co-registered to one template (SRI24);
seg labels are 0 background, 1 necrotic core (NCR), 2 oedema (ED), 4 enhancing tumour (ET).

Reading (docs/papers.md §11, the code's ``gen_dataset.py``; "our reading" where marked):

* **Orientation.** Arrays are taken as stored in the NIfTI file (``dataobj``, scaling applied),
  never reoriented: BraTS cases share one template grid, so one array axis means one anatomical
  direction in every case. Axial slice ``z`` is the *third* array axis, ``data[:, :, z]``, and a
  slice is laid out as stored: (H, W) = (array axis 0, array axis 1), as ``gen_dataset.py`` saves
  it. Volumes are (D, H, W) = (axis 2, axis 0, axis 1). Images and masks use the same layout.
* **Intensity.** Each modality volume is min–max normalised over the whole volume of its case
  and quantised once: ``uint8 = rint(255 * (v - min) / (max - min))`` (a constant volume gives
  0). The paper saves the same normalised slices as JPEG; we keep them lossless.
* **Classes** ``[normal, tumor]``. A slice is ``tumor`` if the whole-tumour mask (seg > 0)
  covers more than ``tumour_fraction`` of the slice (``mean(seg[:, :, z] > 0) > 0.01``, the
  paper's > 1 % rule), computed at native resolution before any resizing; else ``normal``.
  A volume is ``tumor`` if any seg voxel is > 0. Every real BraTS 2021 training case has a tumour,
  so volume mode is for localisation with models trained elsewhere (or on stand-ins with
  ``healthy_fraction`` > 0), not for classification.
* **Masks** are the whole tumour (seg > 0) of every item, all known; a ``normal`` slice can hold a
  few tumour pixels (≤ 1 %). Per-item voxel counts of the sub-labels are kept in ``meta``
  (``ncr_voxels``, ``ed_voxels``, ``et_voxels``) with ``tumour_fraction`` (whole tumour / slice or
  volume) and ``case`` (+ ``z`` for slices).
* **Blank slices** (our reading; ``drop_blank``): a slice with no brain voxel in any configured
  modality (every voxel at its volume's minimum, the skull-stripped background 0) and no tumour
  voxel is dropped. ``gen_dataset.py`` keeps them as ``normal`` images; ``drop_blank=False`` does
  the same.
* **Resizing** (``image_size`` > 0): in-plane only, to image_size × image_size, by bilinear
  interpolation with antialiasing (``torch.nn.functional.interpolate``, ``antialias=True``) of the
  normalised floats; masks by the same interpolation of the 0/1 mask thresholded at 0.5, so they
  stay aligned with the interpolated image. Volumes keep their depth.
* **Splits** ("assigned"): :func:`assign_splits` by case, stratified by whether the case has a
  tumour, so a case's slices never straddle train and test and a case gets the same split in
  slice and volume mode. With the default 0.1 the 1,251 training cases give the paper's
  1,126 / 125.
* ids: slices ``"<split>/<class>/<case>-<z>"`` (the paper's ``<caseid>-<z>``), volumes
  ``"<split>/<class>/<case>"``; ``source`` is the case folder (relative to the root) and
  ``sha256`` the case checksum: ``sha256`` of the concatenated hex ``sha256`` digests of the files
  used (the configured modalities in order, then seg), see :func:`case_checksum`.

Registered with ``dims=brats_dims``: the items are 2D in the default slice mode and 3D
(N, C, D, H, W) with ``mode: volumes`` (``cambench.data.item_dims`` reads it from the options).

The stand-in (:func:`generate_brats_standin`) writes brain-like cases with a planted tumour in
exactly this layout; the reader reads it back like real data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .formats import DataError, Prepared, ReadContext, assign_splits, register_format, sha256_file

MODALITIES = ("t1", "t1ce", "t2", "flair")
SEG = "seg"
SEG_LABELS = (0, 1, 2, 4)            # background, necrotic core, oedema, enhancing tumour
CLASSES = ["normal", "tumor"]
MODES = ("slices", "volumes")
SUFFIXES = (".nii.gz", ".nii")
LAYOUT = ("<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz (or .nii), "
          "e.g. BraTS2021_00000/BraTS2021_00000_flair.nii.gz")


def _nibabel():
    try:
        import nibabel
    except ImportError:  # pragma: no cover - nibabel is imported lazily so the package imports without it
        raise DataError("format 'brats' needs nibabel to read NIfTI files (pip install nibabel)") from None
    return nibabel


# ------------------------------------------------------------------------------------------------
# Layout
# ------------------------------------------------------------------------------------------------

def check_options(*, modalities=("flair",), mode: str = "slices", tumour_fraction: float = 0.01,
                  slice_step: int = 1, image_size: int = 0, test_fraction: float = 0.1, **_) -> list[str]:
    """The options' values (their types are checked by the registry); returns the modality list."""
    if isinstance(modalities, str):
        modalities = [modalities]
    mods = [str(m).lower() for m in modalities]
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown or not mods:
        raise DataError(f"format 'brats' option 'modalities': unknown modality {unknown or '(none given)'}; "
                        f"choose from {list(MODALITIES)} (files {LAYOUT})")
    if len(set(mods)) != len(mods):
        raise DataError(f"format 'brats' option 'modalities': {mods} names a modality twice")
    if mode not in MODES:
        raise DataError(f"format 'brats' option 'mode': must be one of {list(MODES)}, got {mode!r}")
    if not 0 <= tumour_fraction < 1:
        raise DataError(f"format 'brats' option 'tumour_fraction': must be in [0, 1), got {tumour_fraction}")
    if int(slice_step) != slice_step or slice_step < 1:
        raise DataError(f"format 'brats' option 'slice_step': must be an integer >= 1, got {slice_step}")
    if int(image_size) != image_size or image_size < 0:
        raise DataError(f"format 'brats' option 'image_size': must be an integer >= 0 (0 = native), "
                        f"got {image_size}")
    if not 0 < test_fraction < 1:
        raise DataError(f"format 'brats' option 'test_fraction': must be in (0, 1), got {test_fraction}")
    return mods


def case_folders(root: Path) -> list[Path]:
    """The case folders under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"BraTS root folder not found: {root} (expected layout {LAYOUT})")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not cases:
        raise DataError(f"{root}: no case folders (expected layout {LAYOUT})")
    return cases


def case_file(case_dir: Path, kind: str) -> Path:
    """``<case>/<case>_<kind>.nii.gz`` (or ``.nii``); a DataError names the missing file."""
    stem = case_dir / f"{case_dir.name}_{kind}"
    for suffix in SUFFIXES:
        path = stem.with_name(stem.name + suffix)
        if path.is_file():
            return path
    raise DataError(f"{stem}.nii.gz: {kind} file of case '{case_dir.name}' not found (nor .nii) "
                    f"(expected layout {LAYOUT})")


def case_paths(case_dir: Path, modalities: list[str]) -> list[Path]:
    """The files a case needs: the modalities in order, then seg."""
    return [case_file(case_dir, kind) for kind in [*modalities, SEG]]


def check_brats(root: Path, *, modalities=("flair",), mode: str = "slices", tumour_fraction: float = 0.01,
                slice_step: int = 1, drop_blank: bool = True, image_size: int = 0,
                test_fraction: float = 0.1) -> None:
    """Cheap check (no decoding): the options, then every case has its modality and seg files."""
    mods = check_options(modalities=modalities, mode=mode, tumour_fraction=tumour_fraction,
                         slice_step=slice_step, image_size=image_size, test_fraction=test_fraction)
    for case_dir in case_folders(root):
        case_paths(case_dir, mods)


def case_checksum(paths: list[Path]) -> str:
    """sha256 of the concatenated hex sha256 digests of ``paths`` (in that order)."""
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode("ascii")).hexdigest()


# ------------------------------------------------------------------------------------------------
# Volumes
# ------------------------------------------------------------------------------------------------

def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data as stored, affine) of a 3D NIfTI file; trailing length-1 axes are dropped."""
    nib = _nibabel()
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises several kinds for a truncated or foreign file
        raise DataError(f"{path}: cannot read as NIfTI ({type(err).__name__}: {err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape} (expected layout {LAYOUT})")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataError(f"{path}: volume holds NaN or infinite values")
    return data, np.asarray(img.affine)


def minmax_normalise(volume: np.ndarray) -> np.ndarray:
    """float64 ``(v - min) / (max - min)`` over the whole volume (zeros when constant)."""
    v = volume.astype(np.float64)
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)


def to_uint8(normalised: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 ``rint(255 * x)``."""
    return np.clip(np.rint(normalised * 255), 0, 255).astype(np.uint8)


def read_case(case_dir: Path, modalities: list[str], quantise: bool = True) -> dict:
    """Decode and check one case: its min-max normalised modalities (C, X, Y, Z) -- uint8 when
    ``quantise``, else float32 in [0, 1] (to be resized first) --, seg, brain mask, files."""
    paths = case_paths(case_dir, modalities)
    seg_path = paths[-1]
    channels, brain, shape, affine = [], None, None, None
    for path in paths[:-1]:
        data, aff = load_volume(path)
        if shape is None:
            shape, affine, brain = data.shape, aff, np.zeros(data.shape, bool)
        elif data.shape != shape:
            raise DataError(f"{path}: shape {data.shape} differs from {shape} of {paths[0].name}; "
                            f"a case's modalities and seg must share one grid")
        brain |= data > data.min()
        normalised = minmax_normalise(data)
        channels.append(to_uint8(normalised) if quantise else normalised.astype(np.float32))
    seg_raw, _ = load_volume(seg_path)
    if seg_raw.shape != shape:
        raise DataError(f"{seg_path}: shape {seg_raw.shape} differs from {shape} of {paths[0].name}; "
                        f"a case's modalities and seg must share one grid")
    outside = np.ones(seg_raw.shape, bool)
    for label in SEG_LABELS:
        outside &= seg_raw != label
    if outside.any():
        bad = np.unique(seg_raw[outside])
        raise DataError(f"{seg_path}: seg values {bad[:8].tolist()} outside the BraTS labels "
                        f"{list(SEG_LABELS)} (0 background, 1 necrotic core, 2 oedema, 4 enhancing)")
    return {"images": np.stack(channels), "seg": seg_raw.astype(np.uint8), "brain": brain,
            "paths": paths, "affine": affine}


def resize_inplane(arrays: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) float -> (..., size, size): bilinear with antialiasing, float32."""
    import torch
    import torch.nn.functional as F

    lead, hw = arrays.shape[:-2], arrays.shape[-2:]
    if tuple(hw) == (size, size):
        return arrays.astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32)).reshape(-1, 1, *hw)
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.reshape(*lead, size, size).numpy()


def _label_counts(seg: np.ndarray, axes: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {f"{name}_voxels": (seg == value).sum(axis=axes).astype(np.int64)
            for name, value in (("ncr", 1), ("ed", 2), ("et", 4))}


def _slices_of_case(case: dict, tumour_fraction: float, slice_step: int, drop_blank: bool,
                    image_size: int) -> dict:
    images, seg = case["images"], case["seg"]          # (C, X, Y, Z), (X, Y, Z)
    zs = np.arange(0, seg.shape[2], slice_step)
    if drop_blank:
        keep = case["brain"][:, :, zs].any(axis=(0, 1)) | (seg[:, :, zs] > 0).any(axis=(0, 1))
        zs = zs[keep]
    tumour = seg[:, :, zs] > 0                         # (X, Y, n)
    fraction = tumour.mean(axis=(0, 1))                # the paper's np.mean(mask) per slice
    pixels = images[:, :, :, zs].transpose(3, 0, 1, 2)  # (n, C, H=X, W=Y)
    masks = tumour.transpose(2, 0, 1)                  # (n, H, W)
    if image_size:
        pixels = to_uint8(resize_inplane(pixels, image_size))
        masks = resize_inplane(masks.astype(np.float32), image_size) >= 0.5
    labels = (fraction > tumour_fraction).astype(np.int64)
    return {"images": np.ascontiguousarray(pixels), "masks": masks, "labels": labels,
            "z": zs.astype(np.int64), "tumour_fraction": fraction,
            **_label_counts(seg[:, :, zs], (0, 1))}


def _volume_of_case(case: dict, image_size: int) -> dict:
    images, seg = case["images"], case["seg"]
    pixels = images.transpose(0, 3, 1, 2)              # (C, D=Z, H=X, W=Y)
    tumour = seg.transpose(2, 0, 1) > 0                # (D, H, W)
    masks = tumour
    if image_size:
        pixels = to_uint8(resize_inplane(pixels, image_size))
        masks = resize_inplane(tumour.astype(np.float32), image_size) >= 0.5
    return {"images": np.ascontiguousarray(pixels)[None], "masks": masks[None],
            "labels": np.array([int(tumour.any())], np.int64),
            "tumour_fraction": np.array([tumour.mean()]),
            **{k: v[None] for k, v in _label_counts(seg, (0, 1, 2)).items()}}


def brats_dims(options: dict) -> int:
    """Spatial dims of the prepared items: 2 for slices (the default), 3 for volumes."""
    return 3 if (options or {}).get("mode", "slices") == "volumes" else 2


# ------------------------------------------------------------------------------------------------
# Stand-in
# ------------------------------------------------------------------------------------------------

# Mean intensity per tissue and modality (arbitrary units, ~realistic relative contrasts):
# FLAIR: CSF suppressed, oedema bright; T1ce: enhancing rim bright, necrotic core dark;
# T2: CSF, oedema and core bright; T1: tumour slightly dark.
_TISSUES = ("csf", "gm", "wm", "ed", "et", "ncr")
_CONTRAST = {
    "t1":    {"csf": 0.25, "gm": 0.60, "wm": 0.85, "ed": 0.52, "et": 0.56, "ncr": 0.38},
    "t1ce":  {"csf": 0.22, "gm": 0.58, "wm": 0.78, "ed": 0.55, "et": 1.40, "ncr": 0.25},
    "t2":    {"csf": 1.00, "gm": 0.62, "wm": 0.45, "ed": 0.85, "et": 0.70, "ncr": 0.95},
    "flair": {"csf": 0.12, "gm": 0.58, "wm": 0.48, "ed": 1.00, "et": 0.85, "ncr": 0.72},
}
_SCALE = {"t1": 900.0, "t1ce": 1100.0, "t2": 1400.0, "flair": 700.0}  # int16 range per modality


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise (sigma in voxels, periodic), scaled to unit std."""
    white = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * sum(f ** 2 for f in freqs))
    field = np.fft.ifftn(np.fft.fftn(white) * kernel).real
    return field / (field.std() + 1e-12)


def _blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in volume.shape], indexing="ij")
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * sum(f ** 2 for f in freqs))
    return np.fft.ifftn(np.fft.fftn(volume) * kernel).real


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def standin_case(rng: np.random.Generator, shape: tuple[int, int, int], tumour: bool,
                 tumour_radius: tuple[float, float], noise: float) -> dict[str, np.ndarray]:
    """One synthetic case: ``{modality: int16 volume, "seg": uint8 volume}`` of ``shape`` (x, y, z)."""
    shape = tuple(int(s) for s in shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    centre = (np.array(shape) - 1) / 2 + rng.uniform(-0.03, 0.03, 3) * np.array(shape)
    semi = np.array(shape) * np.array([0.40, 0.45, 0.42]) * rng.uniform(0.93, 1.05, 3)
    rel = (grid - centre) / semi
    radius = np.sqrt((rel ** 2).sum(-1))
    folds = _smooth_field(rng, shape, 1.2)
    radius_eff = radius + 0.03 * _smooth_field(rng, shape, 2.5)
    brain = radius_eff < 1.0
    # Grey-matter ribbon with folded inner boundary, white matter inside, CSF in sulci and ventricles.
    code = {name: i for i, name in enumerate(_TISSUES)}
    tissue = np.full(shape, code["wm"], dtype=np.int64)
    tissue[radius_eff + 0.06 * folds > 0.78] = code["gm"]
    tissue[(radius_eff > 0.86) & (folds > 1.2)] = code["csf"]
    for side in (-1, 1):
        v = rel - np.array([side * 0.16, 0.05, 0.08])
        tissue[np.sqrt((v[..., 0] / 0.08) ** 2 + (v[..., 1] / 0.30) ** 2 + (v[..., 2] / 0.28) ** 2) < 1] = code["csf"]
    seg = np.zeros(shape, np.uint8)
    if tumour:
        r0 = rng.uniform(*tumour_radius)
        # A centre inside the brain, away from its surface, so most of the tumour lies in the brain.
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        t_centre = centre + direction * rng.uniform(0.0, 0.5) * semi
        axes = rng.uniform(0.8, 1.25, 3)
        local = (grid - t_centre) @ _random_rotation(rng).T / axes
        dist = np.sqrt((local ** 2).sum(-1)) / r0 + 0.12 * _smooth_field(rng, shape, 2.0)
        core = rng.uniform(0.28, 0.42)
        rim = core + rng.uniform(0.15, 0.25)
        inside = brain & (dist < 1.0)
        seg[inside] = 2
        seg[inside & (dist < rim)] = 4
        seg[inside & (dist < core)] = 1
        for label, name in ((2, "ed"), (4, "et"), (1, "ncr")):
            tissue[seg == label] = code[name]
    bias = 1 + 0.06 * _smooth_field(rng, shape, 8.0)
    texture = _smooth_field(rng, shape, 0.8)
    out: dict[str, np.ndarray] = {}
    for modality in MODALITIES:
        lut = np.array([_CONTRAST[modality][name] for name in _TISSUES])
        mean = _blur(lut[tissue] * brain, 0.6)
        signal = mean * bias * (1 + 0.05 * texture)
        n1, n2 = rng.standard_normal((2, *shape)) * noise
        value = np.sqrt((signal + n1) ** 2 + n2 ** 2)          # Rician magnitude noise
        gain = _SCALE[modality] * rng.uniform(0.85, 1.15)
        out[modality] = np.where(brain, np.clip(np.rint(value * gain), 1, 32767), 0).astype(np.int16)
    out[SEG] = seg
    return out


def standin_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """1 mm isotropic, LPS-stored like BraTS (x -> left, y -> posterior, z -> superior), centred."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [(shape[0] - 1) / 2, (shape[1] - 1) / 2, -(shape[2] - 1) / 2]
    return affine


def generate_brats_standin(out: Path, *, counts: dict, seed: int, shape=(48, 48, 20),
                           tumour_radius=(4.0, 7.0), noise: float = 0.03, healthy_fraction: float = 0.0) -> None:
    """Write ``sum(counts.values())`` synthetic cases in the BraTS layout to ``out/data``.

    ``counts``: the number of cases is the sum of its values (e.g. ``{train: 54, test: 6}`` = 60
    cases; the reader assigns the splits itself). ``shape``: (x, y, z) voxels, 1 mm isotropic.
    ``tumour_radius``: range of the whole-tumour radius in voxels (oedema shell outside, enhancing
    rim, necrotic core innermost). ``noise``: Rician noise std relative to the white-matter signal.
    ``healthy_fraction``: fraction of cases drawn without a tumour (real BraTS has none; > 0 gives
    volume mode two classes). Case ``i`` is ``BraTS2021_<i:05d>`` and depends only on (seed, i).
    """
    nib = _nibabel()
    n_cases = sum(int(v) for v in dict(counts).values())
    shape = tuple(int(s) for s in shape)
    if n_cases < 1:
        raise ValueError(f"brats stand-in: counts {counts} give no cases")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"brats stand-in: shape must be three sizes >= 8 (x, y, z), got {list(shape)}")
    lo, hi = (float(r) for r in tumour_radius)
    if not 0 < lo <= hi:
        raise ValueError(f"brats stand-in: tumour_radius must be [low, high] with 0 < low <= high, got {tumour_radius}")
    if not 0 <= healthy_fraction <= 1:
        raise ValueError(f"brats stand-in: healthy_fraction must be in [0, 1], got {healthy_fraction}")
    affine = standin_affine(shape)
    for i in range(n_cases):
        rng = np.random.default_rng([int(seed), i])
        tumour = rng.random() >= healthy_fraction
        volumes = standin_case(rng, shape, tumour, (lo, hi), noise)
        name = f"BraTS2021_{i:05d}"
        folder = Path(out) / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        for kind, data in volumes.items():
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, str(folder / f"{name}_{kind}.nii.gz"))


# ------------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------------

@register_format("brats", layout=LAYOUT, check=check_brats, standin=generate_brats_standin, splits="assigned",
                 dims=brats_dims, id_masks=False,
                 summary="BraTS 2021 case folders (NIfTI modalities + seg): axial slices (AME-CAM) or volumes")
def read_brats(ctx: ReadContext, *, modalities=("flair",), mode: str = "slices", tumour_fraction: float = 0.01,
               slice_step: int = 1, drop_blank: bool = True, image_size: int = 0,
               test_fraction: float = 0.1) -> Prepared:
    """Every case, decoded and checked, into slices or volumes (see the module docstring).

    ``ctx.channels`` does not apply: the channels are the ``modalities``, in that order.
    """
    mods = check_options(modalities=modalities, mode=mode, tumour_fraction=tumour_fraction,
                         slice_step=slice_step, image_size=image_size, test_fraction=test_fraction)
    slices = mode == "slices"
    parts: list[dict] = []
    names: list[str] = []
    first = None
    for case_dir in case_folders(ctx.root):
        case = read_case(case_dir, mods, quantise=not image_size)
        shape = case["seg"].shape
        if first is None:
            first = (case_dir, shape, case["affine"])
        else:
            ref_dir, ref_shape, _ = first
            axes = ([] if slices else [2]) + ([] if image_size else [0, 1])
            if any(shape[a] != ref_shape[a] for a in axes):
                need = {(): "", (0, 1): "one in-plane size (array axes 0, 1), or set image_size",
                        (2,): "one depth (array axis 2)",
                        (0, 1, 2): "one shape (or set image_size for the in-plane size)"}[tuple(sorted(axes))]
                raise DataError(f"{case['paths'][-1]}: volume shape {shape} differs from {ref_shape} of case "
                                f"'{ref_dir.name}'; in mode '{mode}' all cases must share {need}")
        part = (_slices_of_case(case, tumour_fraction, slice_step, drop_blank, image_size) if slices
                else _volume_of_case(case, image_size))
        part["checksum"] = case_checksum(case["paths"])
        part["case_tumour"] = int(case["seg"].any())
        parts.append(part)
        names.append(case_dir.name)
        del case
    n_per = [len(p["labels"]) for p in parts]
    labels = np.concatenate([p["labels"] for p in parts])
    case_of = [name for name, n in zip(names, n_per) for _ in range(n)]
    case_tumour = np.array([p["case_tumour"] for p, n in zip(parts, n_per) for _ in range(n)], np.int64)
    split = assign_splits(case_of, case_tumour, test_fraction, ctx.seed)
    images = np.concatenate([p.pop("images") for p in parts])
    masks = np.concatenate([p.pop("masks") for p in parts])
    if slices:
        z = np.concatenate([p["z"] for p in parts])
        ids = [f"{s}/{CLASSES[y]}/{c}-{k}" for s, y, c, k in zip(split, labels.tolist(), case_of, z.tolist())]
    else:
        ids = [f"{s}/{CLASSES[y]}/{c}" for s, y, c in zip(split, labels.tolist(), case_of)]
    meta = {"case": np.array(case_of, dtype=object)}
    if slices:
        meta["z"] = z
    for column in ("tumour_fraction", "ncr_voxels", "ed_voxels", "et_voxels"):
        meta[column] = np.concatenate([p[column] for p in parts])
    nib = _nibabel()
    attrs = {"modalities": mods, "mode": mode, "tumour_fraction": tumour_fraction, "slice_step": slice_step,
             "drop_blank": drop_blank, "image_size": image_size, "test_fraction": test_fraction,
             "cases": len(names), "native_shape": list(first[1]) if first else [],
             "axcodes": "".join(nib.aff2axcodes(first[2])) if first else "",
             "orientation": ("slice z = array axis 2 as stored; (H, W) = (array axis 0, axis 1)" if slices else
                             "(D, H, W) = (array axis 2, axis 0, axis 1) as stored")}
    return Prepared(images=images, labels=labels, class_names=list(CLASSES), ids=ids, split=split,
                    source=case_of, sha256=[p["checksum"] for p, n in zip(parts, n_per) for _ in range(n)],
                    masks=masks, mask_known=None, meta=meta, attrs=attrs)
