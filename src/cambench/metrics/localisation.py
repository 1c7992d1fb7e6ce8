"""Localisation metrics against ground-truth masks (docs/metrics.md §7 to §10)."""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from .base import MetricInputs, register_metric


def peak_coordinates(maps: Tensor) -> Tensor:
    """(N, ndim) coordinates of each map's maximum; ties go to the first index in C order."""
    shape = maps.shape[1:]
    flat = maps.flatten(1).argmax(dim=1)
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    return torch.stack(coords[::-1], dim=1)


@register_metric("pointing_game", bounds={"tolerance_px": "[0, inf)"},
                 needs=("masks",), higher_is_better=True, aggregate="class_mean",
                 family="localisation",
                 summary="hit if a ground-truth pixel lies within the tolerance of the map's peak")
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
# Mass-based scores (docs/metrics.md §8, §10) and binarised overlap (docs/metrics.md §9)
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


def _check_threshold(metric: str, threshold: str, fraction: float, top_percent: float, bins: int) -> None:
    """The parameters of :func:`binarise`, checked for ``metric``."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"{metric}: threshold must be one of {THRESHOLDS}, got {threshold!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"{metric}: fraction must be in (0, 1], got {fraction}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"{metric}: top_percent must be in (0, 100], got {top_percent}")
    if bins != int(bins) or bins < 2:
        raise ValueError(f"{metric}: bins must be an integer >= 2, got {bins}")


def _overlap(x: MetricInputs, metric: str, threshold: str, fraction: float, top_percent: float,
             bins: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """|B ∩ GT|, |B|, |GT| (float64, (N,)) and applies, after validating the parameters."""
    _check_threshold(metric, threshold, fraction, top_percent, bins)
    _, masks = _flat_masks(x, metric)
    selected = binarise(x.heatmaps, threshold, fraction, top_percent, int(bins)).flatten(1)
    inter = (selected & masks).sum(dim=1).double()
    return inter, selected.sum(dim=1).double(), masks.sum(dim=1).double(), masks.any(dim=1)


@register_metric("iou", bounds={"threshold": THRESHOLDS, "fraction": "(0, 1]", "top_percent": "(0, 100]",
                         "bins": "int [2, inf)"},
                 needs=("masks",), higher_is_better=True, family="localisation",
                 summary="intersection over union of the thresholded map and the ground-truth mask")
def iou(x: MetricInputs, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
        bins: int = 256) -> tuple[Tensor, Tensor]:
    """``|B ∩ GT| / |B ∪ GT|`` with B = map >= tau (see :func:`binarise`; default tau = 0.5 × max).
    A constant map selects every pixel (IoU = |GT| / n). Empty masks: not applicable."""
    inter, selected, truth, applies = _overlap(x, "iou", threshold, fraction, top_percent, bins)
    return (inter / (selected + truth - inter).clamp_min(1)).float(), applies


@register_metric("dice", bounds={"threshold": THRESHOLDS, "fraction": "(0, 1]", "top_percent": "(0, 100]",
                         "bins": "int [2, inf)"},
                 needs=("masks",), higher_is_better=True, family="localisation",
                 summary="Dice overlap of the thresholded map and the ground-truth mask")
def dice(x: MetricInputs, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
         bins: int = 256) -> tuple[Tensor, Tensor]:
    """``2 |B ∩ GT| / (|B| + |GT|)``, B as for :func:`iou` (so Dice = 2 IoU / (1 + IoU))."""
    inter, selected, truth, applies = _overlap(x, "dice", threshold, fraction, top_percent, bins)
    return (2 * inter / (selected + truth).clamp_min(1)).float(), applies


# ------------------------------------------------------------------------------------------------
# Connected components, boxes and surfaces on (N, H, W) / (N, D, H, W) batches (docs/metrics.md §9)
# ------------------------------------------------------------------------------------------------

# Neighbourhood sizes accepted per number of spatial axes, with the "rank" of each: the largest
# number of axes along which a neighbour may differ (scipy's generate_binary_structure(ndim, rank)).
CONNECTIVITIES = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def _spatial_ndim(binary: Tensor, name: str) -> int:
    ndim = binary.dim() - 1
    if ndim not in CONNECTIVITIES:
        raise ValueError(f"{name}: expected a batch (N, H, W) or (N, D, H, W), got shape {tuple(binary.shape)}")
    return ndim


def _neighbourhood_rank(connectivity: int | None, ndim: int, default_rank: int, metric: str) -> int:
    """The rank of ``connectivity`` (a neighbour count, e.g. 8) for ``ndim`` axes; None: ``default_rank``."""
    if connectivity is None:
        return default_rank
    allowed = CONNECTIVITIES[ndim]
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValueError(f"{metric}: connectivity must be one of {sorted(allowed)} for {ndim}D maps (or None), "
                         f"got {connectivity!r}")
    return allowed[connectivity]


def _neighbourhood_max(x: Tensor, rank: int, outside: float) -> Tensor:
    """Max of ``x`` (N, *S) over each pixel and its neighbours of the given rank; pixels beyond the
    border count as ``outside``. Shifted slices, not max-pooling, which is several times slower on CPU."""
    ndim = x.dim() - 1
    padded = torch.nn.functional.pad(x, (1, 1) * ndim, value=outside)
    if rank == ndim:  # the full 3^ndim cube is separable: a 3-wide max along each axis in turn
        out = padded
        for axis in range(1, ndim + 1):
            size = x.shape[axis]
            out = torch.maximum(torch.maximum(out.narrow(axis, 0, size), out.narrow(axis, 1, size)),
                                out.narrow(axis, 2, size))
        return out
    out = x
    for offset in itertools.product((-1, 0, 1), repeat=ndim):
        if 0 < sum(map(abs, offset)) <= rank:
            view = (slice(None),) + tuple(slice(1 + o, 1 + o + size) for o, size in zip(offset, x.shape[1:]))
            out = torch.maximum(out, padded[view])
    return out


# Pixels per chunk on the CPU: a chunk's working arrays then stay in the cache.
CPU_CHUNK_PIXELS = 2**18


def connected_components(binary: Tensor, connectivity: int | None = None) -> Tensor:
    """Labels (N, *S) int64 of the connected components of each binary image (N, H, W) or (N, D, H, W):
    0 for background, 1..K numbered in the order of each component's first pixel in C order (as
    ``scipy.ndimage.label`` numbers them). ``connectivity``: 4 or 8 in 2D, 6, 18 or 26 in 3D;
    None is full connectivity (8 / 26, as OpenCV's contours in the WSOL box protocol).

    Batched label propagation with hooking and pointer jumping: each foreground pixel starts with
    a value that decreases in C order and points at the pixel whose own value it holds. Every
    round, each pixel takes the max over its neighbourhood (shifted maxima, as a max-pool), hands
    it to the pixel it points at (so a whole chain learns it at once), and then jumps twice to the
    value of the pixel it points at. Values only grow and stay inside the component; a round that
    changes nothing leaves every component at the value of its first pixel. Hooking and jumping
    keep the rounds few (about 5 on CAM maps at 64 x 64, where plain propagation needs 35); images
    that stopped changing drop out of the batch.
    """
    ndim = _spatial_ndim(binary, "connected_components")
    rank = _neighbourhood_rank(connectivity, ndim, ndim, "connected_components")
    binary = binary.bool()
    n_img, n = binary.shape[0], math.prod(binary.shape[1:])
    if n_img == 0 or n == 0:
        return torch.zeros(binary.shape, dtype=torch.long, device=binary.device)
    # On the CPU, chunks that fit in the cache run about twice as fast as one large batch.
    step = max(1, CPU_CHUNK_PIXELS // n) if binary.device.type == "cpu" else n_img
    return torch.cat([_label_chunk(binary[i:i + step], rank) for i in range(0, n_img, step)])


def _label_chunk(binary: Tensor, rank: int) -> Tensor:
    """:func:`connected_components` of a non-empty batch (N, *S) bool, for a neighbourhood rank."""
    n_img, shape, n = binary.shape[0], binary.shape[1:], math.prod(binary.shape[1:])
    # Float values for the fast maxima; exact integers up to 2^24 in float32.
    dtype = torch.float32 if n < 2**24 else torch.float64
    own = n - torch.arange(n, device=binary.device, dtype=dtype)     # the first pixel has the largest value
    # Column n is a sink that always holds 0: background (value 0) points there.
    fg = torch.nn.functional.pad(binary.reshape(n_img, n), (0, 1)).to(dtype)
    labels = fg * torch.nn.functional.pad(own, (0, 1))
    active = None                                                     # None: every image of the chunk
    while True:
        current, mask = (labels, fg) if active is None else (labels[active], fg[active])
        grown = _neighbourhood_max(current[:, :n].reshape(-1, *shape), rank, 0.0).reshape(-1, n)
        grown = torch.nn.functional.pad(grown, (0, 1)) * mask
        hooked = grown.scatter_reduce(1, (n - current).long(), grown, reduce="amax") * mask
        for _ in range(2):
            hooked = hooked.gather(1, (n - hooked).long())
        changed = (hooked != current).any(dim=1)
        if active is None:
            labels = hooked
            active = changed.nonzero().squeeze(1)
        else:
            labels[active] = hooked
            active = active[changed]
        if not active.numel():
            break
    labels = labels[:, :n]
    roots = (labels == own) & (labels > 0)
    number = torch.nn.functional.pad(roots.long().cumsum(dim=1), (0, 1))
    return number.gather(1, (n - labels).long()).view(binary.shape)


def largest_component(binary: Tensor, connectivity: int | None = None) -> Tensor:
    """(N, *S) bool: the largest connected component of each binary image; ties go to the component
    whose first pixel comes first in C order; an empty image stays empty."""
    labels = connected_components(binary, connectivity)
    n_img, n = labels.shape[0], math.prod(labels.shape[1:])
    if n_img == 0 or n == 0:
        return labels > 0
    step = max(1, CPU_CHUNK_PIXELS // n) if labels.device.type == "cpu" else n_img
    return torch.cat([_largest_label(labels[i:i + step]) for i in range(0, n_img, step)])


def _largest_label(labels: Tensor) -> Tensor:
    """(N, *S) bool: where ``labels`` (N, *S) holds its most frequent non-zero label (the first on ties)."""
    flat = labels.flatten(1)
    # float32 counts are exact up to 2^24 pixels and half the traffic of int64 ones.
    sizes = torch.zeros(flat.shape[0], flat.shape[1] + 1, device=flat.device, dtype=torch.float32)
    sizes.scatter_add_(1, flat, torch.ones(flat.shape, device=flat.device, dtype=torch.float32))
    sizes[:, 0] = 0
    best = sizes.argmax(dim=1, keepdim=True)
    return ((flat == best) & (flat > 0)).view(labels.shape)


def bounding_boxes(binary: Tensor) -> Tensor:
    """(N, 2 ndim) int64 boxes of the foreground of each binary image (N, *S): the start of every
    axis, then its stop (exclusive), axes in array order ((y0, x0, y1, x1) in 2D, (z0, y0, x0, z1,
    y1, x1) in 3D), so the box holds prod(stop - start) pixels. An empty image gets all zeros."""
    ndim = _spatial_ndim(binary, "bounding_boxes")
    binary = binary.bool()
    starts, stops = [], []
    for axis in range(1, ndim + 1):
        others = tuple(a for a in range(1, ndim + 1) if a != axis)
        present = binary.any(dim=others) if others else binary                  # (N, size)
        size = present.shape[1]
        first = present.long().argmax(dim=1)
        last = size - present.flip(1).long().argmax(dim=1)
        occupied = present.any(dim=1)
        starts.append(torch.where(occupied, first, 0))
        stops.append(torch.where(occupied, last, 0))
    return torch.stack(starts + stops, dim=1)


def box_overlap(a: Tensor, b: Tensor) -> Tensor:
    """IoU (*B,) float64 of boxes (*B, 2 ndim) as :func:`bounding_boxes` writes them (integer or float
    pixel edges, computed in float64; shapes broadcast); 0 where both are empty."""
    a, b = a.double(), b.double()
    ndim = a.shape[-1] // 2
    lo, hi = torch.maximum(a[..., :ndim], b[..., :ndim]), torch.minimum(a[..., ndim:], b[..., ndim:])
    inter = (hi - lo).clamp_min(0).prod(dim=-1)
    volume_a = (a[..., ndim:] - a[..., :ndim]).clamp_min(0).prod(dim=-1)
    volume_b = (b[..., ndim:] - b[..., :ndim]).clamp_min(0).prod(dim=-1)
    union = volume_a + volume_b - inter
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), 0.0)


GT_BOXES = ("auto", "boxes", "mask_bbox")


def resolve_gt_box(gt_box: str, has_boxes: bool, where: str = "box_iou") -> str:
    """The ground truth box_iou compares with: "boxes" (the data set's annotated boxes) or "mask_bbox"
    (the bounding box of the mask); "auto" is "boxes" where there are boxes, else "mask_bbox"."""
    if gt_box not in GT_BOXES:
        raise ValueError(f"{where}: gt_box must be one of {GT_BOXES}, got {gt_box!r}")
    if gt_box == "boxes" and not has_boxes:
        raise ValueError(f"{where}: gt_box 'boxes' needs annotated ground-truth boxes (/boxes in the dataset "
                         f"file), but there are none; use gt_box 'auto' or 'mask_bbox'")
    return ("boxes" if has_boxes else "mask_bbox") if gt_box == "auto" else gt_box


def label_class_boxes(boxes: Tensor, box_image: Tensor, box_label: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The ground-truth boxes (M, 4) of each image's own label class, gathered per image: padded boxes
    (N, B, 4) float32 and which of them are real (N, B) bool, B = the most boxes one image has (>= 1).
    ``box_image`` (M,) is each box's row in ``labels`` (N,), ``box_label`` (M,) its class; boxes of
    other classes are dropped (ILSVRC scores a box against the GT boxes of the image's class)."""
    n = labels.shape[0]
    box_image = box_image.long()
    keep = box_label.long() == labels.long()[box_image]
    image = box_image[keep]
    order = torch.argsort(image, stable=True)
    image, kept = image[order], boxes[keep][order].float()
    counts = torch.bincount(image, minlength=n)
    slot = torch.arange(image.shape[0], device=image.device) - (counts.cumsum(0) - counts)[image]
    width = max(1, int(counts.max())) if n else 1
    padded = torch.zeros(n, width, boxes.shape[-1], dtype=torch.float32, device=boxes.device)
    valid = torch.zeros(n, width, dtype=torch.bool, device=boxes.device)
    padded[image, slot] = kept
    valid[image, slot] = True
    return padded, valid


def _box_params(params: dict, inputs: set[str]) -> dict:
    """box_iou's parameters with gt_box resolved for a data set supplying ``inputs`` (for the tables)."""
    return {**params, "gt_box": resolve_gt_box(params["gt_box"], "boxes" in inputs)}


@register_metric("box_iou", bounds={"threshold": "(0, 1]", "gt_box": GT_BOXES},
                 needs=("masks",), higher_is_better=True, family="localisation", resolve_params=_box_params,
                 our_reading="Grad-CAM's box localisation: the 15 % threshold, the largest component, the mask's box",
                 summary="IoU of the box around the largest component of the map above 0.15 x max with the "
                         "ground-truth boxes of the label class (or the mask's box)")
def box_iou(x: MetricInputs, threshold: float = 0.15, connectivity: int | None = None,
            gt_box: str = "auto") -> tuple[Tensor, Tensor]:
    """Grad-CAM's weakly supervised localisation (docs/papers.md §1, docs/metrics.md §9), as an IoU per image.

    The map is binarised at ``threshold`` × its maximum (0.15, our reading of the paper's 15 %; the
    CAM protocol uses 0.2), the largest connected component is kept (``connectivity`` 4 / 8 in 2D,
    6 / 18 / 26 in 3D; None = full, 8 / 26, as the OpenCV contours of the WSOL code) and its
    bounding box is compared with the ground truth, ``gt_box``:

    - "boxes": the annotated boxes of the image's label class (``x.boxes`` / ``x.box_valid``, see
      :func:`label_class_boxes`); the value is the largest IoU over them, as ILSVRC counts a box
      that matches any ground-truth box of the class. Images without such a box: not applicable.
    - "mask_bbox": the bounding box of the whole mask. Empty masks: not applicable.
    - "auto" (default): "boxes" where the inputs have boxes, else "mask_bbox".

    The paper counts an image as localised when this IoU is >= 0.5. A constant map (all zeros
    included) has no object and scores 0, where :func:`iou` lets it select every pixel.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"box_iou: threshold must be a fraction of the map's max in (0, 1], got {threshold!r}")
    gt_box = resolve_gt_box(gt_box, x.boxes is not None)
    ndim = _spatial_ndim(x.heatmaps, "box_iou")
    _neighbourhood_rank(connectivity, ndim, ndim, "box_iou")
    if gt_box == "boxes":
        x.require("box_valid", metric="box_iou")
        n = x.heatmaps.shape[0]
        if x.boxes.dim() != 3 or x.boxes.shape[0] != n or x.boxes.shape[2] != 2 * ndim \
                or x.box_valid.shape != x.boxes.shape[:2]:
            raise ValueError(f"box_iou: boxes {tuple(x.boxes.shape)} / box_valid {tuple(x.box_valid.shape)} do not "
                             f"fit {n} maps of {ndim} axes (expected (N, B, {2 * ndim}) and (N, B))")
    else:
        _flat_masks(x, "box_iou")
    maps = x.heatmaps.flatten(1)
    informative = maps.amax(dim=1) > maps.amin(dim=1)
    selected = binarise(x.heatmaps, "frac", fraction=float(threshold)) & informative.view(-1, *([1] * ndim))
    predicted = bounding_boxes(largest_component(selected, connectivity))
    if gt_box == "mask_bbox":
        masks = x.masks.bool()
        return box_overlap(predicted, bounding_boxes(masks)).float(), masks.flatten(1).any(dim=1)
    valid = x.box_valid.bool()
    # (N, B) IoUs; the pad column keeps the max defined when no image has a box (B = 0)
    overlaps = torch.nn.functional.pad(box_overlap(predicted[:, None, :], x.boxes).masked_fill(~valid, 0.0), (0, 1))
    return overlaps.amax(dim=1).float(), valid.any(dim=1)


def _surfaces(binary: Tensor, rank: int) -> Tensor:
    """Pixels of each object (N, *S) that a binary erosion with the structure of ``rank`` removes
    (medpy's object border); beyond the image border is background, as in scipy's erosion."""
    background = (~binary).to(torch.uint8)
    return binary & (_neighbourhood_max(background, rank, 1) > 0)


# Where the padding points of a surface sit: far from every real point, so never the nearest one.
_FAR = 1e6


def _padded_coordinates(points: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Coordinates (C, width, ndim) float32 of the True pixels of each image (C, *S), padded with
    far-away points, and the mask (C, width) of the real ones."""
    n_img, shape = points.shape[0], points.shape[1:]
    flat = points.reshape(n_img, -1)
    image, pixel = flat.nonzero(as_tuple=True)
    slot = flat.long().cumsum(dim=1).sub_(1)[image, pixel]
    coords = torch.full((n_img, width, len(shape)), _FAR, device=points.device, dtype=torch.float32)
    valid = torch.zeros(n_img, width, device=points.device, dtype=torch.bool)
    rest = pixel
    for axis in range(len(shape) - 1, -1, -1):
        coords[image, slot, axis] = (rest % shape[axis]).float()
        rest = rest // shape[axis]
    valid[image, slot] = True
    return coords, valid


def _exact_distance(d: Tensor) -> Tensor:
    """float64 distances from float32 ones between integer coordinates: the squared distance is an
    integer, so rounding it undoes float32's error."""
    return d.double().square().round().sqrt()


def _directed_distances(p: Tensor, t: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """For point sets p (C, P, ndim) and t (C, T, ndim): the distance (C, P) float64 from each point of p
    to the nearest of t, and (C, T) from each of t to the nearest of p, by ``torch.cdist`` over blocks
    of p's points of about ``budget`` matrix entries (a large 3D surface does not fit in one)."""
    rows = max(1, budget // max(1, p.shape[0] * t.shape[1]))
    to_t, to_p = [], None
    for start in range(0, p.shape[1], rows):
        pairwise = torch.cdist(p[:, start:start + rows], t)                   # (C, rows, T)
        to_t.append(pairwise.amin(dim=2))
        block = pairwise.amin(dim=1)
        to_p = block if to_p is None else torch.minimum(to_p, block)
    return _exact_distance(torch.cat(to_t, dim=1)), _exact_distance(to_p)


def surface_hd95(prediction: Tensor, truth: Tensor, connectivity: int | None = None, percentile: float = 95.0,
                 one_empty: float = 373.12866, memory_mb: float = 256.0) -> Tensor:
    """Percentile Hausdorff distance (N,) float64 between binary images (N, H, W) or (N, D, H, W), as
    medpy's ``hd95`` (spacing 1, distances in pixels): the ``percentile`` (linear interpolation, as
    ``np.percentile``) of the union of both directed sets of surface-to-nearest-surface distances.

    Surfaces are the pixels a binary erosion removes, with the structure of ``connectivity``: None is
    medpy's default ``connectivity=1`` (faces: 4 in 2D, 6 in 3D), which AME-CAM uses; 8 / 26 erode
    with the full cube. AME-CAM's conventions: 0 where both are empty, ``one_empty`` where exactly one is.

    Batched: the surface points are padded per group of images of similar surface size (so padding at
    most doubles a side) and the distances taken by ``torch.cdist`` in chunks of about ``memory_mb``;
    padding points sit far away, so they are never the nearest.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"surface_hd95: prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ")
    ndim = _spatial_ndim(prediction, "surface_hd95")
    rank = _neighbourhood_rank(connectivity, ndim, 1, "surface_hd95")
    if not 0 <= percentile <= 100:
        raise ValueError(f"surface_hd95: percentile must be in [0, 100], got {percentile}")
    prediction, truth = prediction.bool(), truth.bool()
    n_img = prediction.shape[0]
    surface_p, surface_t = _surfaces(prediction, rank), _surfaces(truth, rank)
    count_p, count_t = surface_p.flatten(1).sum(dim=1), surface_t.flatten(1).sum(dim=1)
    result = torch.zeros(n_img, device=prediction.device, dtype=torch.float64)
    both = (count_p > 0) & (count_t > 0)
    result[(count_p > 0) != (count_t > 0)] = one_empty
    if not both.any():
        return result
    # Group the images by the power of two of their larger surface, so padding at most doubles a side.
    width = torch.maximum(count_p, count_t)
    group = torch.where(both, torch.log2(width.double()).ceil().long(), -1)
    budget = max(1, int(memory_mb * 2**20 // 8))  # float32 entries of the distance matrix and its mins
    for g in group[both].unique().tolist():
        members = (group == g).nonzero().squeeze(1)
        wide_p, wide_t = int(count_p[members].max()), int(count_t[members].max())
        step = max(1, budget // (wide_p * wide_t))
        for start in range(0, members.numel(), step):
            index = members[start:start + step]
            p, p_valid = _padded_coordinates(surface_p[index], wide_p)
            t, t_valid = _padded_coordinates(surface_t[index], wide_t)
            to_truth, to_prediction = _directed_distances(p, t, budget)
            # Both directed sets, padding dropped as +inf at the end of the sorted union.
            distances = torch.cat([to_truth.masked_fill_(~p_valid, math.inf),
                                   to_prediction.masked_fill_(~t_valid, math.inf)], dim=1).sort(dim=1).values
            m = (count_p[index] + count_t[index]).double()
            position = percentile / 100 * (m - 1)
            low = position.floor()
            high = torch.minimum(low + 1, m - 1)
            below = distances.gather(1, low.long()[:, None]).squeeze(1)
            above = distances.gather(1, high.long()[:, None]).squeeze(1)
            result[index] = below + (above - below) * (position - low)
    return result


@register_metric("hd95", bounds={"threshold": THRESHOLDS, "fraction": "(0, 1]", "top_percent": "(0, 100]",
                                 "bins": "int [2, inf)", "one_empty": "[0, inf)", "empty_masks": ("skip", "score")},
                 needs=("masks",), higher_is_better=False, family="localisation",
                 our_reading="AME-CAM's HD95: medpy's surfaces and its empty-mask constants",
                 summary="95th percentile Hausdorff distance (px) of the thresholded map's and the mask's surfaces")
def hd95(x: MetricInputs, threshold: str = "frac", fraction: float = 0.5, top_percent: float = 20.0,
         bins: int = 256, connectivity: int | None = None, one_empty: float = 373.12866,
         empty_masks: str = "skip") -> tuple[Tensor, Tensor]:
    """AME-CAM's HD95 (docs/papers.md §11; medpy ``hd95`` with spacing 1) between B = map >= tau (the
    thresholds of :func:`iou` / :func:`dice`, see :func:`binarise`) and the mask; see :func:`surface_hd95`
    for the surfaces (``connectivity`` None = medpy's default, faces) and the distances.

    AME-CAM's conventions: 0 when B and the mask are both empty, and ``one_empty`` (373.12866) when
    exactly one is. AME-CAM scores tumour slices only, so by default (``empty_masks = "skip"``) an
    image with an empty mask does not apply, as for the other localisation metrics; ``"score"``
    applies the conventions to every image (:func:`binarise` always selects a map's peak, so an empty
    mask then scores ``one_empty``).
    """
    if empty_masks not in ("skip", "score"):
        raise ValueError(f"hd95: empty_masks must be 'skip' or 'score', got {empty_masks!r}")
    _check_threshold("hd95", threshold, fraction, top_percent, bins)
    if isinstance(one_empty, bool) or not isinstance(one_empty, (int, float)) or not 0 <= one_empty < math.inf:
        raise ValueError(f"hd95: one_empty must be a finite distance >= 0, got {one_empty!r}")
    _, masks = _flat_masks(x, "hd95")
    ndim = _spatial_ndim(x.heatmaps, "hd95")
    _neighbourhood_rank(connectivity, ndim, 1, "hd95")
    selected = binarise(x.heatmaps, threshold, fraction, top_percent, int(bins))
    values = surface_hd95(selected, x.masks.bool(), connectivity, 95.0, float(one_empty), x.context.memory_mb)
    applies = masks.any(dim=1) if empty_masks == "skip" else torch.ones(masks.shape[0], dtype=torch.bool,
                                                                           device=masks.device)
    return values.float(), applies
