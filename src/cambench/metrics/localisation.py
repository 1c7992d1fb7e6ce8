"""Localisation metrics against ground-truth masks (methods.md §3.7)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import MetricInputs, register_metric


def peak_coordinates(maps: Tensor) -> Tensor:
    """(N, ndim) coordinates of each map's maximum; ties go to the first index in C order."""
    shape = maps.shape[1:]
    flat = maps.flatten(1).argmax(dim=1)
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    return torch.stack(coords[::-1], dim=1)


@register_metric("pointing_game", needs=("masks",), higher_is_better=True, aggregate="class_mean",
                 family="localisation", summary="hit if a ground-truth pixel lies within the tolerance of the map's peak")
def pointing_game(x: MetricInputs, tolerance_px: float = 15.0) -> tuple[Tensor, Tensor]:
    x.require("masks", metric="pointing_game")
    if tolerance_px < 0:
        raise ValueError(f"pointing_game: tolerance_px must be >= 0, got {tolerance_px}")
    masks = x.masks.bool()
    n, shape = masks.shape[0], masks.shape[1:]
    peak = peak_coordinates(x.heatmaps)
    d2 = torch.zeros(masks.shape, device=masks.device, dtype=torch.float32)
    for axis, size in enumerate(shape):
        view = [1] * len(shape)
        view[axis] = size
        grid = torch.arange(size, device=masks.device, dtype=torch.float32).view(1, *view)
        d2 += (grid - peak[:, axis].float().view(n, *([1] * len(shape)))) ** 2
    # TorchRay: squared distance < tolerance^2; at tolerance 0 the peak itself must be in the mask.
    near = (d2 < tolerance_px ** 2) | (d2 == 0)
    hit = (masks & near).flatten(1).any(dim=1)
    return hit.float(), masks.flatten(1).any(dim=1)
