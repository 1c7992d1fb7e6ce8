"""Faithfulness metrics: how the model's score responds when salient pixels are removed or kept.

* ``deletion_auc`` / ``insertion_auc``: RISE's causal curves (docs/metrics.md §2);
* ``average_drop``, ``increase_in_confidence``, ``average_gain``: the explanation image E = L ⊙ x
  (Grad-CAM++ paper, §3.3);
* ``relative_drop``: Finer-CAM's relative confidence drop RD@5% (§3.4, our reading);
* ``ablation_area``, ``ablation_drop``, ``ablation_flip``: the street-scene ablation measure
  (docs/papers.md §12, our reading).

Every composite image is built on the device for the whole batch; model evaluations are chunked
by :func:`chunk_size`. Images are in pixel space: "the dataset mean colour" (``x.context.fill``) is RISE's
and pytorch-grad-cam's zero of the normalised tensor.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    SCORES,
    MetricInputs,
    batched_logits,
    chunk_size,
    model_logits,
    register_metric,
    table_cached,
    target_scores,
)

SUBSTRATES = ("mean", "zero", "blur")
BLUR_PADDINGS = ("mean", "reflect")
RISE_BLUR_SIZE, RISE_BLUR_SIGMA = 11, 5.0     # RISE Evaluation.ipynb: gkern(klen=11, nsig=5)
MULTIPLY_SPACES = ("normalised", "pixel")
REFERENCE_CLASSES = ("rank1", "mean_top3")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

def _check_score(score: str, metric: str) -> None:
    if score not in SCORES:
        raise ValueError(f"{metric}: score must be one of {SCORES}, got {score!r}")


def _scores_of(logits: Tensor, score: str) -> Tensor:
    """All class scores (B, K): softmax probabilities or the logits themselves."""
    return logits.softmax(dim=1) if score == "prob" else logits


def _fill_of(x: MetricInputs) -> tuple[Tensor, ...]:
    """The fill colour as a cache condition (the modified images depend on it), when there is one."""
    return (x.context.fill,) if x.context.fill is not None else ()


def saliency_rank(heatmaps: Tensor) -> Tensor:
    """Rank (N, P) of every pixel in descending map order; ties keep the pixel order (stable)."""
    n, p = heatmaps.shape[0], math.prod(heatmaps.shape[1:])
    order = heatmaps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p, device=order.device).expand(n, p))
    return rank


def composite_outputs(x: MetricInputs, base: Tensor, replacement: Tensor, counts: Tensor,
                      read: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Model read-outs (N, T, ...) of images whose ``counts[t]`` most salient pixels come from
    ``replacement`` and the others from ``base``.

    ``base`` and ``replacement`` are (N, C, *S) images or (C,) colours. ``read(logits, image
    index)`` turns a chunk's logits (B, K) into per-pair values (B, ...). All (image, t) pairs go
    through the model in chunks sized by the memory budget; the composites are built on the
    device from the rank map, never one image at a time. Deletion: base = the images,
    replacement = the substrate; insertion the other way round.
    """
    n, c = x.images.shape[:2]
    shape = tuple(x.images.shape[1:])
    p = math.prod(x.images.shape[2:])
    rank = saliency_rank(x.heatmaps)
    flat = x.images.flatten(2)

    def as_flat(v: Tensor) -> tuple[Tensor, bool]:
        full = v.ndim > 1
        return (v.to(flat).flatten(2) if full else v.to(flat).view(1, c, 1)), full

    (base, base_full), (replacement, replacement_full) = as_flat(base), as_flat(replacement)
    steps = counts.numel()
    pairs = n * steps
    # per pair: the mask, one gathered copy per full-size operand, and the composite
    step_size = chunk_size(c * p * flat.element_size() * (2 + base_full + replacement_full), x.context.memory_mb)
    out = None
    for start in range(0, max(pairs, 1), step_size):  # an empty batch still yields the read-out's shape
        pair = torch.arange(start, min(start + step_size, pairs), device=flat.device)
        img, t = pair // steps, pair % steps
        taken = (rank[img] < counts[t, None]).unsqueeze(1)          # (B, 1, P)
        batch = torch.where(taken, replacement[img] if replacement_full else replacement,
                            base[img] if base_full else base).view((-1,) + shape)
        values = read(x.context.model(batch), img)
        if out is None:
            out = torch.empty((pairs,) + tuple(values.shape[1:]), device=flat.device, dtype=torch.float32)
        out[pair] = values.float()
    return out.view((n, steps) + tuple(out.shape[1:]))


def removal_curve(x: MetricInputs, steps: int, base: Tensor, replacement: Tensor, score: str) -> Tensor:
    """Target scores (N, steps + 1) after taking the top t * ceil(P / steps) pixels (t = 0..steps,
    at most P) from ``replacement``, the rest from ``base`` (see :func:`composite_outputs`)."""
    p = math.prod(x.images.shape[2:])
    per_step = math.ceil(p / steps)
    counts = (torch.arange(steps + 1, device=x.images.device) * per_step).clamp_max(p)
    return composite_outputs(x, base, replacement, counts,
                             lambda logits, img: target_scores(logits, x.targets[img], score))


def trapezoid_auc(curve: Tensor) -> Tensor:
    """Normalised trapezoid over [0, 1]: (sum s_t - s_0/2 - s_T/2) / T."""
    steps = curve.shape[1] - 1
    return (curve.sum(dim=1) - curve[:, 0] / 2 - curve[:, -1] / 2) / steps


def rise_blur_kernel1d(size: int = RISE_BLUR_SIZE, sigma: float = RISE_BLUR_SIGMA,
                       dtype=torch.float64, device=None) -> Tensor:
    """The 1D factor (size,) of RISE's ``gkern(size, sigma)``.

    RISE builds its kernel as ``scipy.ndimage.gaussian_filter`` of a centred delta on a size × size
    grid: a Gaussian truncated at 4σ (radius 20 for σ = 5, wider than the grid), its tails
    folded back by scipy's "reflect" boundary (d c b a | a b c d | d c b a). That filter is
    separable, so the 2D (3D) kernel is the outer product of this vector with itself.
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 / (sigma * sigma) * offsets * offsets)
    taps = taps / taps.sum()
    source = _reflect(torch.arange(size)[:, None] + offsets.long()[None, :], size)
    kernel = (taps * (source == size // 2)).sum(dim=1)
    return kernel.to(dtype=dtype, device=device)


def _reflect(index: Tensor, n: int) -> Tensor:
    """scipy's "reflect" source index of positions on an axis of length n (period 2n)."""
    i = torch.remainder(index, 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def rise_blur(images: Tensor, fill: Tensor | None, padding: str = "mean") -> Tensor:
    """RISE's insertion substrate in pixel space: the 11 × 11 (3D: 11 × 11 × 11) σ = 5 Gaussian blur.

    RISE convolves the *normalised* tensor with zero padding; in pixel space that is padding with
    the dataset mean colour, ``fill + blur0(images - fill)`` (``padding='mean'``, the default:
    identical to RISE). ``padding='reflect'`` [our reading] pads by scipy's reflect instead, so
    the border is not pulled toward the mean colour. Applied separably, one axis at a time.
    """
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"blur_padding must be one of {BLUR_PADDINGS}, got {padding!r}")
    c = images.shape[1]
    kernel = rise_blur_kernel1d(dtype=images.dtype, device=images.device).view(1, 1, -1)
    radius = RISE_BLUR_SIZE // 2
    if padding == "mean":
        if fill is None:
            raise ValueError("the blur substrate with blur_padding 'mean' needs the dataset mean colour (fill)")
        centre = fill.to(images).view((1, c) + (1,) * (images.ndim - 2))
        out = images - centre
    else:
        out = images
    for axis in range(2, images.ndim):
        moved = out.movedim(axis, -1)
        lines = moved.reshape(-1, 1, moved.shape[-1])
        if padding == "mean":
            lines = F.pad(lines, (radius, radius))
        else:
            n = lines.shape[-1]
            lines = lines[..., _reflect(torch.arange(-radius, n + radius, device=images.device), n)]
        out = F.conv1d(lines, kernel).view(moved.shape).movedim(-1, axis)
    return out + centre if padding == "mean" else out


def _substrate(x: MetricInputs, substrate: str, blur_padding: str, metric: str,
               allowed: Sequence[str] = SUBSTRATES, param: str = "substrate") -> Tensor:
    """(C,) colour or (N, C, *S) image that removed pixels take; ``param`` names the choice in errors."""
    c = x.images.shape[1]
    if substrate not in allowed:
        raise ValueError(f"{metric}: {param} must be one of {tuple(allowed)}, got {substrate!r}")
    if substrate == "mean":
        if x.context.fill is None:
            raise ValueError(f"{metric}: {param} 'mean' needs the dataset mean colour (fill)")
        return x.context.fill
    if substrate == "zero":
        return torch.zeros(c, device=x.images.device)
    if blur_padding not in BLUR_PADDINGS:
        raise ValueError(f"{metric}: blur_padding must be one of {BLUR_PADDINGS}, got {blur_padding!r}")
    if blur_padding == "mean" and x.context.fill is None:
        raise ValueError(f"{metric}: the blur substrate with blur_padding 'mean' needs the dataset mean colour (fill)")
    return rise_blur(x.images, x.context.fill, blur_padding)


def _check_steps(steps: int, metric: str) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{metric}: steps must be an integer >= 1, got {steps!r}")


# --------------------------------------------------------------------------------------------
# Deletion and insertion (docs/metrics.md §2)
# --------------------------------------------------------------------------------------------

_DOC_CURVE = """
    ``steps`` T: ceil(P / T) pixels (voxels) change per step, T + 1 evaluations, normalised
    trapezoid AUC (RISE uses T = 224 at 224 px). ``substrate``: 'mean' (the dataset mean colour,
    RISE's zero of the normalised tensor), 'zero' (black pixels) or 'blur' (RISE's 11 × 11,
    σ = 5 Gaussian blur of the image; 3D: 11 × 11 × 11). ``blur_padding`` for 'blur': 'mean'
    (RISE's zero padding of the normalised tensor) or 'reflect' [our reading]. ``score``: 'prob'
    (softmax, as RISE) or 'logit'. Pixels are ranked by the map, descending; ties keep the pixel
    order.
"""


def _curve_auc(x: MetricInputs, metric: str, steps: int, substrate: str, score: str, blur_padding: str,
               insert: bool) -> Tensor:
    """Deletion (image -> substrate) or insertion (substrate -> image) AUC; the one shared check path."""
    x.require("model", metric=metric)
    _check_steps(steps, metric)
    _check_score(score, metric)
    other = _substrate(x, substrate, blur_padding, metric)
    base, replacement = (other, x.images) if insert else (x.images, other)
    return trapezoid_auc(removal_curve(x, steps, base, replacement, score))


# Model work per image and method, for cambench.plan: forwards (plus 'head' replays, 'backward's); a
# part with a 'once' key is computed once per key and method, or once per table with 'per: table'.
_IMAGE_LOGITS = {"forward": 1, "per": "table", "once": "model_logits"}  # the images' own logits (model_logits)


@register_metric("deletion_auc", bounds={"steps": "int [1, inf)", "substrate": SUBSTRATES, "score": SCORES,
                         "blur_padding": BLUR_PADDINGS},
                 needs=("model",), higher_is_better=False, family="faithfulness",
                 cost=lambda p, layer: {"forward": p["steps"] + 1},
                 summary="area under the target score as the most salient pixels are removed")
def deletion_auc(x: MetricInputs, steps: int = 64, substrate: str = "mean", score: str = "prob",
                 blur_padding: str = "mean") -> Tensor:
    return _curve_auc(x, "deletion_auc", steps, substrate, score, blur_padding, insert=False)


@register_metric("insertion_auc", bounds={"steps": "int [1, inf)", "substrate": SUBSTRATES, "score": SCORES,
                         "blur_padding": BLUR_PADDINGS},
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 cost=lambda p, layer: {"forward": p["steps"] + 1},
                 summary="area under the target score as the most salient pixels are restored on a blurred image")
def insertion_auc(x: MetricInputs, steps: int = 64, substrate: str = "blur", score: str = "prob",
                  blur_padding: str = "mean") -> Tensor:
    return _curve_auc(x, "insertion_auc", steps, substrate, score, blur_padding, insert=True)


deletion_auc.__doc__ = f"""RISE deletion: start from the image, replace the next pixels by the substrate per step;
    lower is better.

    Parameters:{_DOC_CURVE}"""
insertion_auc.__doc__ = f"""RISE insertion: start from the substrate (default the blurred image), copy the next
    original pixels back per step; higher is better.

    Parameters:{_DOC_CURVE}"""


# --------------------------------------------------------------------------------------------
# Average Drop, Increase in Confidence, Average Gain (docs/metrics.md §3)
# --------------------------------------------------------------------------------------------

def explanation_scores(x: MetricInputs, multiply_space: str, score: str, metric: str) -> tuple[Tensor, Tensor]:
    """Target scores Y (N,) of the images and O (N,) of the explanation images E = L ⊙ x.

    ``multiply_space='normalised'`` multiplies the model's normalised tensor, as pytorch-grad-cam
    and torchcam do; with the dataset normalisation (mean = ``x.context.fill``) that is
    ``fill + L * (x - fill)`` in pixel space. ``'pixel'`` multiplies the image, as the Grad-CAM++
    paper: ``L * x``.
    """
    x.require("model", metric=metric)
    _check_score(score, metric)
    if multiply_space not in MULTIPLY_SPACES:
        raise ValueError(f"{metric}: multiply_space must be one of {MULTIPLY_SPACES}, got {multiply_space!r}")
    if multiply_space == "normalised" and x.context.fill is None:
        raise ValueError(f"{metric}: multiply_space 'normalised' needs the dataset mean colour (fill)")

    def explained_logits() -> Tensor:
        maps = x.heatmaps.unsqueeze(1).to(x.images)
        if multiply_space == "normalised":
            centre = x.context.fill.to(x.images).view((1, -1) + (1,) * (x.images.ndim - 2))
            return batched_logits(x, centre + maps * (x.images - centre))
        return batched_logits(x, maps * x.images)

    # average_drop, increase_in_confidence and average_gain read the same two sets of logits
    explained = table_cached(x, ("explanation_logits", multiply_space), (x.heatmaps, x.images, x.context.model),
                             explained_logits, equal=_fill_of(x))
    return (target_scores(model_logits(x), x.targets, score).float(),
            target_scores(explained, x.targets, score).float())


_DOC_AD = """
    ``multiply_space``: 'normalised' (default [our reading]; the model's normalised tensor is
    multiplied, i.e. ``fill + L * (x - fill)`` in pixel space, fill = dataset mean colour, as in
    pytorch-grad-cam and torchcam) or 'pixel' (``L * x``, the Grad-CAM++ paper). ``score``: 'prob'
    (softmax, default) or 'logit'.
"""


def _explanation_cost(p: dict, layer: dict) -> list:
    """The three explanation-image metrics share the explanation image's logits (cambench.plan)."""
    return [_IMAGE_LOGITS, {"forward": 1, "once": ("explanation", p["multiply_space"])}]


@register_metric("average_drop", bounds={"multiply_space": MULTIPLY_SPACES, "score": SCORES},
                 cost=_explanation_cost,
                 needs=("model",), higher_is_better=False, family="faithfulness",
                 summary="100 * max(0, Y - O) / Y: relative score drop on the map-weighted image (%)")
def average_drop(x: MetricInputs, multiply_space: str = "normalised", score: str = "prob") -> tuple[Tensor, Tensor]:
    y, o = explanation_scores(x, multiply_space, score, "average_drop")
    positive = y > 0
    return 100 * (y - o).clamp_min(0) / torch.where(positive, y, 1.0), positive


@register_metric("increase_in_confidence", bounds={"multiply_space": MULTIPLY_SPACES, "score": SCORES},
                 cost=_explanation_cost,
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 summary="100 * 1[O > Y]: the map-weighted image raises the target score (%)")
def increase_in_confidence(x: MetricInputs, multiply_space: str = "normalised", score: str = "prob") -> Tensor:
    y, o = explanation_scores(x, multiply_space, score, "increase_in_confidence")
    return 100 * (o > y).float()


@register_metric("average_gain", bounds={"multiply_space": MULTIPLY_SPACES, "score": SCORES},
                 cost=_explanation_cost,
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 summary="100 * max(0, O - Y) / Y: relative score gain on the map-weighted image (%)")
def average_gain(x: MetricInputs, multiply_space: str = "normalised", score: str = "prob") -> tuple[Tensor, Tensor]:
    y, o = explanation_scores(x, multiply_space, score, "average_gain")
    positive = y > 0
    return 100 * (o - y).clamp_min(0) / torch.where(positive, y, 1.0), positive


average_drop.__doc__ = f"""Average Drop (Grad-CAM++), per image in %: ``100 * max(0, Y - O) / Y``, Y the target score
    of the image, O that of the explanation image; lower is better. The dataset value is the
    mean. Defined where Y > 0 (always for probabilities; a logit may not be).

    Parameters:{_DOC_AD}"""
increase_in_confidence.__doc__ = f"""Increase in Confidence (Grad-CAM++; "Average Increase" in Score-CAM), per image
    ``100 * 1[O > Y]``, so the mean is the percentage of images whose score rose; higher is better.

    Parameters:{_DOC_AD}"""
average_gain.__doc__ = f"""Average Gain, the later papers' "Average Increase" variant, per image in %:
    ``100 * max(0, O - Y) / Y``; higher is better. Defined where Y > 0.

    Parameters:{_DOC_AD}"""


# --------------------------------------------------------------------------------------------
# Finer-CAM relative confidence drop (docs/metrics.md §4)
# --------------------------------------------------------------------------------------------

@register_metric("relative_drop", bounds={"fractions": "each (0, 1]", "mask_value": ("mean", "zero"),
                         "reference_class": REFERENCE_CLASSES, "score": SCORES},
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 cost=lambda p, layer: [_IMAGE_LOGITS, {"forward": len(p["fractions"])}],
                 our_reading="Finer-CAM's RD@5 %: mean-colour mask, reference class rank 1, absolute differences",
                 summary="Finer-CAM RD: target score drop minus reference-class drop after masking the top 5 % "
                         "(our reading)")
def relative_drop(x: MetricInputs, fractions: list = (0.05,), mask_value: str = "mean",
                  reference_class: str = "rank1", score: str = "prob") -> Tensor:
    """Finer-CAM relative confidence drop [our reading of the whole procedure, docs/metrics.md §4].

    Mask the ``ceil(f * P)`` most salient pixels (voxels; ties keep the pixel order), then
    ``RD = (p^c - p^c_*) - (p^d - p^d_*)``, * after masking, c the target and d the reference
    class; absolute differences, not ratios. Higher is better: the masked region hurt c
    specifically, not evidence it shares with d.

    Parameters: ``fractions`` (default [0.05]): the value is the mean of RD over them (a list gives
    the RD curve's mean; evaluate one fraction at a time for the curve). ``mask_value``: 'mean'
    (default, the dataset mean colour = 0 in normalised space, as the re-implementations) or
    'zero' (black). ``reference_class``: 'rank1' (default: the highest-scoring class other than
    the target on the clean image, Finer-CAM's most similar class) or 'mean_top3' (the mean
    drop of the three highest non-target classes; with fewer classes, all of them; docs/metrics.md §4).
    The key is ``reference_class``, not ``reference``, which is the metric inputs' clean-heatmap field.
    ``score``: 'prob' (default) or 'logit'.
    """
    metric = "relative_drop"
    x.require("model", metric=metric)
    _check_score(score, metric)
    f = list(fractions) if isinstance(fractions, (list, tuple)) else []
    if not f or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in f):
        raise ValueError(f"{metric}: fractions must be a non-empty list of numbers in (0, 1], got {fractions!r}")
    if reference_class not in REFERENCE_CLASSES:
        raise ValueError(f"{metric}: reference_class must be one of {REFERENCE_CLASSES}, got {reference_class!r}")
    colour = _substrate(x, mask_value, "mean", metric, allowed=("mean", "zero"), param="mask_value")
    clean_logits = model_logits(x)
    n_classes = clean_logits.shape[1]
    if n_classes < 2:
        raise ValueError(f"{metric}: needs a model with at least 2 classes, got {n_classes}")
    clean = _scores_of(clean_logits, score).float()
    # reference classes: highest clean logits other than the target
    others = clean_logits.float().scatter(1, x.targets[:, None], -math.inf)
    k = 1 if reference_class == "rank1" else min(3, n_classes - 1)
    refs = others.topk(k, dim=1).indices                               # (N, k)
    p = math.prod(x.images.shape[2:])
    # ceil(f * P), rounded first so that e.g. 0.07 * 100 = 7.000000000000001 counts 7 pixels
    counts = torch.tensor([min(p, math.ceil(round(v * p, 6))) for v in f], device=x.images.device)
    chosen = torch.cat([x.targets[:, None], refs], dim=1)              # (N, 1 + k)
    masked = composite_outputs(x, x.images, colour, counts,
                               lambda logits, img: _scores_of(logits, score).gather(1, chosen[img]))
    drop = clean.gather(1, chosen)[:, None, :] - masked               # (N, F, 1 + k)
    return (drop[..., 0] - drop[..., 1:].mean(dim=2)).mean(dim=1)


# --------------------------------------------------------------------------------------------
# Street-scene ablation measure (docs/papers.md §12, our reading)
# --------------------------------------------------------------------------------------------

def _ablation_region(x: MetricInputs, threshold: float, metric: str) -> Tensor:
    if isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ValueError(f"{metric}: threshold must be a number in [0, 1], got {threshold!r}")
    return x.heatmaps >= threshold


def _ablation_logits(x: MetricInputs, threshold: float, substrate: str, blur_padding: str,
                     metric: str) -> tuple[Tensor, Tensor]:
    """Logits (N, K) of the images and of the images with the region R filled."""
    x.require("model", metric=metric)
    region = _ablation_region(x, threshold, metric).unsqueeze(1)

    def ablated_logits() -> Tensor:
        colour = _substrate(x, substrate, blur_padding, metric, allowed=("blur", "mean"))
        if colour.ndim == 1:
            colour = colour.to(x.images).view((1, -1) + (1,) * (x.images.ndim - 2))
        return batched_logits(x, torch.where(region, colour.to(x.images), x.images))

    # ablation_drop and ablation_flip read the same logits
    key = ("ablation_logits", threshold, substrate, blur_padding)
    return model_logits(x), table_cached(x, key, (x.heatmaps, x.images, x.context.model), ablated_logits,
                                         equal=_fill_of(x))


_DOC_ABLATION = """
    The region R is the pixels (voxels) whose map value is >= ``threshold`` (default 0.5) [our
    reading of the paper's AP-feature extraction]. R is filled with ``substrate``: 'blur'
    (default; the same Gaussian-blurred image as the insertion substrate, ``blur_padding`` as
    there) or 'mean' (the dataset mean colour); see docs/papers.md §12.
"""


def _ablation_cost(p: dict, layer: dict) -> list:
    """ablation_drop and ablation_flip share the filled images' logits (cambench.plan)."""
    return [_IMAGE_LOGITS, {"forward": 1, "once": ("ablation", p["threshold"], p["substrate"], p["blur_padding"])}]


@register_metric("ablation_area", bounds={"threshold": "[0, 1]"},
                 needs=(), higher_is_better=None, family="faithfulness",
                 our_reading="the street-scene region (map >= 0.5)",
                 summary="fraction of the image whose map is >= threshold (street-scene ablated region)")
def ablation_area(x: MetricInputs, threshold: float = 0.5) -> Tensor:
    """Street-scene ablation measure, area part [our reading, docs/papers.md §12]: the fraction of
    pixels in R = {map >= ``threshold``} (default 0.5). No model needed. Smaller is a more compact
    explanation, but neither direction is better in itself (``higher_is_better`` None); the
    paper reports 9.61 % on average."""
    return _ablation_region(x, threshold, "ablation_area").flatten(1).float().mean(dim=1)


@register_metric("ablation_drop", cost=_ablation_cost, bounds={"threshold": "[0, 1]", "substrate": ("blur", "mean"),
                         "blur_padding": BLUR_PADDINGS, "score": SCORES},
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 our_reading="the street-scene region (map >= 0.5) and its blur fill",
                 summary="target score before minus after filling the map's region >= threshold")
def ablation_drop(x: MetricInputs, threshold: float = 0.5, substrate: str = "blur", blur_padding: str = "mean",
                  score: str = "prob") -> Tensor:
    _check_score(score, "ablation_drop")
    before, after = _ablation_logits(x, threshold, substrate, blur_padding, "ablation_drop")
    return (target_scores(before, x.targets, score) - target_scores(after, x.targets, score)).float()


@register_metric("ablation_flip", cost=_ablation_cost, bounds={"threshold": "[0, 1]", "substrate": ("blur", "mean"),
                         "blur_padding": BLUR_PADDINGS},
                 needs=("model",), higher_is_better=True, family="faithfulness",
                 our_reading="the street-scene region (map >= 0.5) and its blur fill",
                 summary="1 if filling the map's region >= threshold moves the prediction off the target")
def ablation_flip(x: MetricInputs, threshold: float = 0.5, substrate: str = "blur",
                  blur_padding: str = "mean") -> tuple[Tensor, Tensor]:
    before, after = _ablation_logits(x, threshold, substrate, blur_padding, "ablation_flip")
    applies = before.argmax(dim=1) == x.targets
    return (after.argmax(dim=1) != x.targets).float(), applies


ablation_drop.__doc__ = f"""Street-scene ablation measure, score part [our reading, docs/papers.md §12]:
    ``s_c(x) - s_c(x with R filled)``, c the target. On a 2-class hotspot model with the hotspot
    class as target and ``score='prob'`` this equals the increase of P(non-hotspot), the quantity
    the paper reports ("x % more likely to be classified as non-hotspot"); higher is better.
    ``score``: 'prob' (default) or 'logit'.

    Parameters:{_DOC_ABLATION}"""
ablation_flip.__doc__ = f"""Street-scene ablation measure, flip part [our reading, docs/papers.md §12]: 1 if the
    prediction on the image with R filled is no longer the target, else 0; defined (applies) only
    where the clean prediction is the target, so the mean is the fraction of, e.g., hotspot images
    flipped away from hotspot.

    Parameters:{_DOC_ABLATION}"""
