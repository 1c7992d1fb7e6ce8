"""Small helpers for 3D volumes shared by the volume formats: NIfTI loading, resampling, windowing.

Array layout. Every volume leaves these helpers as a ``(D, H, W)`` array whose index increases
toward the patient's (superior, posterior, left): axial slices from the feet up, each slice in
the radiological display orientation (anterior at the top row, the patient's right on the left
column). This is the storage order of a standard axial DICOM series (ImageOrientationPatient
``[1, 0, 0, 0, 1, 0]``, slices sorted along the normal), so NIfTI and DICOM data of the same
patient give the same array. For NIfTI it is obtained from nibabel's closest canonical (RAS+)
orientation: array axes (x, y, z) transposed to (z, y, x), then y and x reversed
(:data:`LAYOUT`).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .formats import DataError

LAYOUT = ("(D, H, W) = (z, y, x) of the closest canonical (RAS+) orientation with y and x reversed: "
          "index increases toward superior, posterior, left (axial slices in radiological display order)")


def _nibabel():
    import nibabel  # imported lazily: only the volume formats need it
    return nibabel


def canonical_dhw(img) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The float32 ``(D, H, W)`` array (see :data:`LAYOUT`) and its voxel spacing (z, y, x) in mm
    of a loaded 3D nibabel image. Scaling (scl_slope / scl_inter) is applied by ``get_fdata``."""
    nib = _nibabel()
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    zooms = img.header.get_zooms()[:3]
    dhw = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    return dhw, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def load_nifti(path: str | Path, *, canonical: bool = True) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load a 3D NIfTI file as float32 ``(D, H, W)`` (see :data:`LAYOUT`) and its spacing (z, y, x) mm.

    Values are the scaled ones (``get_fdata``: stored × scl_slope + scl_inter). A 4D file with a
    single volume (trailing axes of length 1) is accepted; any other dimensionality, a file that
    does not decode, or a volume with no finite value is a :class:`DataError` naming the file.
    Non-finite voxels of an otherwise valid volume are set to its smallest finite value.
    ``canonical=False``: the array as stored (axes i, j, k, affine ignored) and the header zooms
    in that order — for masks defined on another reader's voxel order.
    """
    data, spacing, _ = load_nifti_oriented(path, canonical=canonical)
    return data, spacing


def load_nifti_oriented(path: str | Path, canonical: bool = True):
    """:func:`load_nifti` plus the file's orientation codes (e.g. ('L', 'P', 'S'))."""
    nib = _nibabel()
    path = Path(path)
    try:
        img = nib.load(str(path))
        shape = tuple(img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) != 3:
            raise DataError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)}")
        if len(img.shape) != 3:
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        codes = tuple(nib.aff2axcodes(img.affine))
        if canonical:
            data, spacing = canonical_dhw(img)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float32))
            spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    except DataError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(f"{path}: cannot read NIfTI volume ({type(err).__name__}: {err})") from None
    finite = np.isfinite(data)
    if not finite.any():
        raise DataError(f"{path}: the volume has no finite value (all NaN/inf)")
    if not finite.all():
        data[~finite] = data[finite].min()
    if min(spacing) <= 0 or not all(np.isfinite(spacing)):
        raise DataError(f"{path}: invalid voxel spacing {spacing} in the header")
    return data, spacing, codes


def resample(volume: np.ndarray, grid, *, mask: bool = False) -> np.ndarray:
    """Resample a ``(D, H, W)`` volume to ``grid`` (D, H, W) with torch trilinear interpolation.

    ``align_corners=False``: the volume's extent is mapped onto the grid's, so output voxel ``o``
    samples input coordinate ``(o + 0.5) · n_in / n_out − 0.5`` (edge values are repeated beyond
    the outermost voxel centres); there is no anti-aliasing when down-sampling. A volume already on
    the grid is returned unchanged (as float32). ``mask=True``: the mask is interpolated as 0/1
    floats and thresholded at > 0.5, so a labelled region keeps its extent and position (a
    structure thinner than about one output voxel can vanish) and stays aligned with the image,
    which is sampled at the same points. Returns float32, or bool for masks.
    """
    grid = tuple(int(g) for g in grid)
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"resample: expected a (D, H, W) volume, got shape {arr.shape}")
    src = arr.astype(np.float32) if not mask else (arr != 0).astype(np.float32)
    if tuple(arr.shape) == grid:
        out = src
    else:
        t = torch.from_numpy(np.ascontiguousarray(src))[None, None]
        out = F.interpolate(t, size=grid, mode="trilinear", align_corners=False)[0, 0].numpy()
    return out > 0.5 if mask else out


def window(hu: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values in [low, high] linearly onto 0..255 (uint8), clipped outside.

    ``u = floor((hu − low) · 255 / (high − low) + 0.5)`` (rounding half up), so ``low`` → 0,
    ``high`` → 255 and ``(low + high) / 2`` → 128.
    """
    if not high > low:
        raise ValueError(f"window: high ({high}) must exceed low ({low})")
    scaled = (np.asarray(hu, dtype=np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.floor(scaled + 0.5), 0, 255).astype(np.uint8)


def check_grid_window(grid, window_: tuple | list, where: str) -> tuple[tuple[int, int, int], tuple[float, float]]:
    """Validate the common ``grid`` / ``window`` options; DataError naming the option otherwise."""
    if (len(grid) != 3 or not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in grid)
            or min(grid) < 1):
        raise DataError(f"{where}: option 'grid' must be three positive integers (D, H, W), got {list(grid)}")
    if (len(window_) != 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in window_)
            or not window_[1] > window_[0]):
        raise DataError(f"{where}: option 'window' must be [low, high] HU with high > low, got {list(window_)}")
    return tuple(int(g) for g in grid), (float(window_[0]), float(window_[1]))
