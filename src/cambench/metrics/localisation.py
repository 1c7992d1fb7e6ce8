"""Localisation metrics against ground-truth masks (methods.md §3.7-§3.10)."""
from __future__ import annotations

import math

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


# ------------------------------------------------------------------------------------------------
# Mass-based scores (methods.md §3.8, §3.10) and binarised overlap (§3.9)
# ------------------------------------------------------------------------------------------------

THRESHOLDS = ("frac", "percentile", "otsu")


def _flat_masks(x: MetricInputs, metric: str) -> tuple[Tensor, Tensor]:
    """Heatmaps (N, n) in float64 and ground-truth masks (N, n) bool, after checking they match."""
    x.require("masks", metric=metric)
    if x.masks.shape != x.heatmaps.shape:
        raise ValueError(f"{metric}: masks {tuple(x.masks.shape)} do not match heatmaps {tuple(x.heatmaps.shape)}")
    return x.heatmaps.flatten(1).double(), x.masks.flatten(1).bool()


def _mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each non-negative map's mass (N, n) inside its mask. A map with no mass counts as
    uniform (share = |GT| / n) rather than 0/0: it is uninformative, not undefined."""
    total = maps.sum(dim=1)
    inside = (maps * masks).sum(dim=1)
    uniform = masks.sum(dim=1).double() / masks.shape[1]
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), uniform).float()


@register_metric("energy_pointing_game", needs=("masks",), higher_is_better=True, family="localisation",
                 summary="share of the ReLU + min-max normalised map's energy inside the ground-truth mask")
def energy_pointing_game(x: MetricInputs) -> tuple[Tensor, Tensor]:
    """Score-CAM's energy-based pointing game, ``Σ_GT L / Σ L`` with L = Norm(ReLU(map)).

    EPG is not offset-invariant, so ReLU and min-max are applied here whatever the input. A
    constant map (all zeros after min-max) is treated as uniform and scores |GT| / n; this is
    the project's convention (the reference divides 0 by 0). Empty masks: not applicable.
    """
    maps, masks = _flat_masks(x, "energy_pointing_game")
    maps = maps.clamp_min(0)
    low = maps.amin(dim=1, keepdim=True)
    span = maps.amax(dim=1, keepdim=True) - low
    maps = torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
    return _mass_inside(maps, masks), masks.any(dim=1)


@register_metric("relevance_mass", needs=("masks",), higher_is_better=True, family="localisation",
                 summary="fraction of the (ReLU'd) map's mass inside the ground-truth mask")
def relevance_mass(x: MetricInputs) -> tuple[Tensor, Tensor]:
    """Relevance Mass Accuracy (Arras et al.; Quantus ``RelevanceMassAccuracy``), ``Σ_GT R / Σ R``
    with R = ReLU(map). Quantus's max-normalisation does not change the ratio and is skipped. A map
    with no positive mass is treated as uniform (|GT| / n) where Quantus returns NaN; the same
    convention as ``energy_pointing_game``, so the two agree on every non-negative min-max map.
    """
    maps, masks = _flat_masks(x, "relevance_mass")
    return _mass_inside(maps.clamp_min(0), masks), masks.any(dim=1)


@register_metric("relevance_rank", needs=("masks",), higher_is_better=True, family="localisation",
                 summary="fraction of the |GT| highest-ranked pixels that lie inside the ground-truth mask")
def relevance_rank(x: MetricInputs) -> tuple[Tensor, Tensor]:
    """Relevance Rank Accuracy (Arras et al.; Quantus ``RelevanceRankAccuracy``).

    With m = |GT|, the share of the m top-ranked pixels inside GT. Pixels tied with the m-th value
    share the remaining places equally (the expected score under random tie-breaking), so flat
    regions of a ReLU'd map do not make the score depend on pixel order; where the m-th value is
    unique this is exactly Quantus's value. An all-constant map scores |GT| / n.
    """
    maps, masks = _flat_masks(x, "relevance_rank")
    m = masks.sum(dim=1)
    kth = maps.sort(dim=1, descending=True).values.gather(1, (m - 1).clamp_min(0)[:, None])
    above, tied = maps > kth, maps == kth
    hits_above = (above & masks).sum(dim=1).double()
    # The tied pixels fill the m - |above| places left; each is a GT pixel with this probability.
    tied_gt_share = (tied & masks).sum(dim=1).double() / tied.sum(dim=1).clamp_min(1)
    places_left = m.double() - above.sum(dim=1)
    hits = hits_above + places_left * tied_gt_share
    return (hits / m.clamp_min(1)).float(), m > 0


def otsu_thresholds(maps: Tensor, bins: int = 256) -> Tensor:
    """Otsu's threshold (N,) of each map (N, *S), equal to ``skimage.filters.threshold_otsu(map,
    nbins=bins)``: a histogram of ``bins`` equal bins over the map's own [min, max], the bin centre
    maximising the between-class variance; a constant map returns its value."""
    flat = maps.flatten(1).double()
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = high - low
    # Edges and bin indices computed in np.histogram's order of operations, so values on an
    # edge fall into the same bin as there.
    steps = torch.arange(bins + 1, device=flat.device, dtype=flat.dtype)
    edges = steps * (span / bins) + low                                       # (N, bins + 1)
    edges[:, -1:] = high
    per_unit = bins / torch.where(span > 0, span, 1.0)
    index = ((flat - low) * per_unit).long().clamp(0, bins - 1)
    # Correct the index where rounding put a value on the wrong side of an edge (as np.histogram does).
    index = index - (flat < edges.gather(1, index)).long()
    index = index + ((flat >= edges.gather(1, index + 1)) & (index != bins - 1)).long()
    counts = torch.zeros(flat.shape[0], bins, device=flat.device, dtype=flat.dtype)
    counts.scatter_add_(1, index, torch.ones_like(flat))
    centres = (edges[:, :-1] + edges[:, 1:]) / 2
    weight1 = counts.cumsum(dim=1)
    weight2 = counts.flip(1).cumsum(dim=1).flip(1)
    mass = counts * centres
    mean1 = mass.cumsum(dim=1) / weight1.clamp_min(1)
    mean2 = mass.flip(1).cumsum(dim=1).flip(1) / weight2.clamp_min(1)
    # Threshold after bin i: class 1 is bins <= i, class 2 bins > i.
    between = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    best = between.argmax(dim=1, keepdim=True)
    tau = centres.gather(1, best).squeeze(1)
    return torch.where(span.squeeze(1) > 0, tau, low.squeeze(1)).to(maps.dtype)


def binarise(maps: Tensor, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
             bins: int = 256) -> Tensor:
    """``B = map >= tau`` (N, *S) bool, tau per map: ``fraction`` of its max ("frac"), the value of its
    ceil(top_percent % of n)-th largest pixel ("percentile"), or Otsu's threshold on ``bins`` bins
    ("otsu"). Percentile ties at tau are kept, except a tie at the map's minimum: then only the
    pixels above the minimum are selected (our reading; a focused map with a flat background would
    otherwise select everything). A constant map selects every pixel under each rule."""
    flat = maps.flatten(1)
    if threshold == "frac":
        tau = fraction * flat.amax(dim=1)
    elif threshold == "percentile":
        k = max(1, math.ceil(top_percent * flat.shape[1] / 100))
        tau = flat.topk(k, dim=1).values[:, -1]
        low, high = flat.amin(dim=1), flat.amax(dim=1)
        selected = flat >= tau[:, None]
        # A map whose floor (e.g. ReLU's zeros) is tied at tau would select every pixel; keep
        # only the pixels above the floor instead (constant maps: all).
        floor_tie = (tau <= low) & (high > low) & (selected.sum(dim=1) > k)
        return (selected & ~(floor_tie[:, None] & (flat <= low[:, None]))).view(maps.shape)
    elif threshold == "otsu":
        tau = otsu_thresholds(maps, bins)
    else:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    return (flat >= tau[:, None]).view(maps.shape)


def _overlap(x: MetricInputs, metric: str, threshold: str, fraction: float, top_percent: float,
             bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """|B ∩ GT|, |B|, |GT| (float64, (N,)) and applies, after validating the parameters."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"{metric}: threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"{metric}: fraction must be in (0, 1], got {fraction}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"{metric}: top_percent must be in (0, 100], got {top_percent}")
    if bins != int(bins) or bins < 2:
        raise ValueError(f"{metric}: bins must be an integer >= 2, got {bins}")
    _, masks = _flat_masks(x, metric)
    selected = binarise(x.heatmaps, threshold, fraction, top_percent, int(bins)).flatten(1)
    inter = (selected & masks).sum(dim=1).double()
    return inter, selected.sum(dim=1).double(), masks.sum(dim=1).double(), masks.any(dim=1)


@register_metric("iou", needs=("masks",), higher_is_better=True, family="localisation",
                 summary="intersection over union of the thresholded map and the ground-truth mask")
def iou(x: MetricInputs, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
        bins: int = 256) -> tuple[Tensor, Tensor]:
    """``|B ∩ GT| / |B ∪ GT|`` with B = map >= tau (see :func:`binarise`; default tau = 0.5 × max).
    A constant map selects every pixel (IoU = |GT| / n). Empty masks: not applicable."""
    inter, selected, truth, applies = _overlap(x, "iou", threshold, fraction, top_percent, bins)
    return (inter / (selected + truth - inter).clamp_min(1)).float(), applies


@register_metric("dice", needs=("masks",), higher_is_better=True, family="localisation",
                 summary="Dice overlap of the thresholded map and the ground-truth mask")
def dice(x: MetricInputs, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
         bins: int = 256) -> tuple[Tensor, Tensor]:
    """``2 |B ∩ GT| / (|B| + |GT|)``, B as for :func:`iou` (so Dice = 2 IoU / (1 + IoU))."""
    inter, selected, truth, applies = _overlap(x, "dice", threshold, fraction, top_percent, bins)
    return (2 * inter / (selected + truth).clamp_min(1)).float(), applies
