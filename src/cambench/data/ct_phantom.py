"""The synthetic chest phantom behind both CT stand-ins (docs/datasets.md §4, §10): HU volumes with lungs,
vessels and ground-glass lesions, and the lesion mask. The layouts are written by :mod:`cambench.data.ct`.
"""
from __future__ import annotations

import numpy as np


def _box(center: np.ndarray, radius: np.ndarray, shape) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(center - radius).astype(int), 0)
    hi = np.minimum(np.ceil(center + radius).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _coords_mm(box: tuple[slice, ...], spacing) -> list[np.ndarray]:
    """Voxel-centre coordinates (mm) of a box, as three broadcastable arrays (z, y, x)."""
    axes = [(np.arange(s.start, s.stop) + 0.5) * sp for s, sp in zip(box, spacing)]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


def chest_phantom(rng: np.random.Generator, shape=(40, 80, 80), spacing=(2.5, 0.8, 0.8), *, n_lesions: int = 0,
                  lesion_radius=(4.0, 8.0), noise: float = 20.0, n_vessels: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic chest CT: int16 HU ``(D, H, W)`` (index toward superior, posterior, left) and a
    bool lesion mask.

    Air (−1000) around an elliptic body of soft tissue (~40 HU) under a fat layer (~−100), a spine
    (~400) at the back, two lung ellipsoids (~−850) holding ``n_vessels`` thin vessels each (~40)
    and ``n_lesions`` ground-glass blobs (−300 … −100 HU, radius ``lesion_radius`` mm, random
    position inside a lung, clipped to it). The mask is each blob's core, where it carries at least
    half its contrast. Gaussian noise of ``noise`` HU everywhere. Anatomy varies a little per call.
    """
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, dtype=np.float64)
    D, H, W = shape
    z = ((np.arange(D) + 0.5) / D * 2 - 1)[:, None, None]
    y = ((np.arange(H) + 0.5) / H * 2 - 1)[None, :, None]
    x = ((np.arange(W) + 0.5) / W * 2 - 1)[None, None, :]
    bw, bh = 0.9 * rng.uniform(0.93, 1.0), 0.7 * rng.uniform(0.93, 1.0)
    hu = np.full(shape, -1000.0, np.float32)
    plane = (x / bw) ** 2 + (y / bh) ** 2
    hu[np.broadcast_to(plane <= 1, shape)] = -100.0 + rng.normal(0, 5)
    hu[np.broadcast_to((x / (bw - 0.07)) ** 2 + (y / (bh - 0.07)) ** 2 <= 1, shape)] = 40.0 + rng.normal(0, 5)
    hu[np.broadcast_to((x / 0.1) ** 2 + ((y - 0.5 * bh) / 0.12) ** 2 <= 1, shape)] = 400.0
    lung = np.zeros(shape, bool)
    lung_hu = -850.0 + rng.normal(0, 15)
    for side in (-1, 1):
        cx = side * 0.42 * bw * rng.uniform(0.95, 1.05)
        rx, ry, rz = 0.28 * bw * rng.uniform(0.9, 1.1), 0.62 * bh * rng.uniform(0.9, 1.05), rng.uniform(0.8, 0.9)
        lung |= ((x - cx) / rx) ** 2 + ((y + 0.05) / ry) ** 2 + (z / rz) ** 2 <= 1
    hu[lung] = lung_hu
    lung_voxels = np.argwhere(lung)
    mask = np.zeros(shape, bool)
    if len(lung_voxels):
        # vessels: short tubes (distance to a segment below a radius), partial-volume soft edges
        for _ in range(n_vessels * 2):
            a = (lung_voxels[rng.integers(len(lung_voxels))] + 0.5) * spacing
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            length, radius = rng.uniform(3.0, 8.0), rng.uniform(0.4, 0.9)
            b = a + direction * length
            box = _box((a + b) / 2 / spacing - 0.5, (length / 2 + 2 * radius) / spacing + 1, shape)
            cz, cy, cx_ = _coords_mm(box, spacing)
            t = np.clip(((cz - a[0]) * direction[0] + (cy - a[1]) * direction[1] + (cx_ - a[2]) * direction[2])
                        / length, 0, 1)
            dist = np.sqrt((cz - a[0] - t * (b[0] - a[0])) ** 2 + (cy - a[1] - t * (b[1] - a[1])) ** 2
                           + (cx_ - a[2] - t * (b[2] - a[2])) ** 2)
            weight = np.clip(1.5 - dist / radius, 0, 1) * lung[box]
            hu[box] += (40.0 - hu[box]) * weight
        for _ in range(int(n_lesions)):
            c = (lung_voxels[rng.integers(len(lung_voxels))] + 0.5) * spacing
            radii = rng.uniform(*lesion_radius) * rng.uniform(0.75, 1.25, size=3)
            value = rng.uniform(-300, -100)
            box = _box(c / spacing - 0.5, radii / spacing + 1, shape)
            cz, cy, cx_ = _coords_mm(box, spacing)
            rho2 = ((cz - c[0]) / radii[0]) ** 2 + ((cy - c[1]) / radii[1]) ** 2 + ((cx_ - c[2]) / radii[2]) ** 2
            profile = np.clip(1.5 * (1 - rho2), 0, 1) * lung[box]
            texture = rng.normal(0, 25, size=profile.shape)
            hu[box] += (value + texture - hu[box]) * profile
            mask[box] |= profile >= 0.5
    hu += rng.normal(0, noise, size=shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask
