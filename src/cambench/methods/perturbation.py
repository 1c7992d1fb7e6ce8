"""Perturbation CAMs: channel weights from batched model evaluations (docs/methods.md §2.7, §2.8).

Masked inputs (Score-CAM) or ablated activations (Ablation-CAM) of every image and channel are
stacked into rows ``(image, channel)`` and evaluated chunk by chunk, the chunk sized by the
memory budget; everything stays on the images' device.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..engine import FLAG_NONPOSITIVE_SCORE, REPLAY_MEMORY_FACTOR, CamError, CamInputs, register_method
from ..models import Normalize
from ..utils import upsample

SCORECAM_VARIANTS = ("pgc", "torchcam", "official")
SCORECAM_BASELINES = ("mean", "black")
MASK_EPS = 1e-8  # pytorch-grad-cam's epsilon in the mask normalisation


def _rows(start: int, stop: int, k: int, device) -> tuple[Tensor, Tensor]:
    rows = torch.arange(start, stop, device=device)
    return rows // k, rows % k


def baseline_colour(model: nn.Module, images: Tensor, baseline: str = "mean") -> Tensor | None:
    """The pixel value ``(1, C, 1, ...)`` that a zero mask leaves, or None for 0 (black).

    ``mean``: the mean of the model's first :class:`cambench.models.Normalize` (its input
    normalisation, in pixel space), so that ``mean + m * (x - mean)`` is the masked *normalised*
    tensor ``m * Normalize(x)`` that pytorch-grad-cam, torchcam and the authors' code feed the
    network; a model without a Normalize gets 0 (its input is taken to be normalised already).
    ``black``: 0, i.e. ``m * x`` in pixel space.
    """
    if baseline not in SCORECAM_BASELINES:
        raise CamError(f"scorecam baseline must be one of {SCORECAM_BASELINES}, got {baseline!r}")
    if baseline == "black":
        return None
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is None:
        return None
    mean = norm.mean.detach().to(images).reshape(-1)
    if mean.numel() not in (1, images.shape[1]):
        raise CamError(f"scorecam baseline 'mean': the model's Normalize has {mean.numel()} mean values "
                       f"for images with {images.shape[1]} channels")
    return mean.view((1, -1) + (1,) * (images.ndim - 2))


def _masks(acts: Tensor, size, variant: str) -> tuple[Tensor, Tensor | None]:
    """Masks in [0, 1] (M, 1, *S) of activation maps (M, 1, *s), and the up-sampled maps.

    pgc / official: up-sample (align_corners True / False), then min-max; torchcam: min-max at
    feature resolution, then up-sample (align_corners=False), as torchcam's code does.
    """
    shape = (-1,) + (1,) * (acts.ndim - 1)
    if variant == "torchcam":
        lo, hi = torch.aminmax(acts.flatten(1), dim=1)
        return upsample((acts - lo.view(shape)) / (hi - lo + MASK_EPS).view(shape), size, False), None
    up = upsample(acts, size, variant == "pgc")
    lo, hi = torch.aminmax(up.flatten(1), dim=1)                          # one pass for both
    return (up - lo.view(shape)) / (hi - lo + MASK_EPS).view(shape), up


def _masked_scores(x: CamInputs, images: Tensor, centre: Tensor | None, variant: str, flat: Tensor,
                   live: Tensor, k: int, chunk: int, scores: Tensor, saliency: Tensor | None) -> None:
    """Fill ``scores`` (and the 'official' saliency) for the (image, channel) rows ``live``, chunk by
    chunk; a masked input is ``centre + m * (x - centre)`` (``m * x`` when ``centre`` is None)."""
    size = images.shape[2:]
    # One buffer for every chunk's masked inputs, in the images' (channels-last) layout: a fresh
    # allocation per chunk made the forwards measurably slower on CPU.
    buffer = torch.empty_like(images[:1]).expand(min(chunk, live.numel()), *images.shape[1:]).clone(
        memory_format=torch.preserve_format)
    centred = images if centre is None else images - centre              # keeps the layout
    for i in range(0, live.numel(), chunk):
        rows = live[i:i + chunk]
        img = rows // k
        masks, up = _masks(flat[rows], size, variant)                     # (M, 1, *S)
        out = buffer[:rows.numel()]
        masked = torch.mul(centred[img], masks, out=out) if centre is None else \
            torch.addcmul(centre, centred[img], masks, out=out)
        logits = x.forward(masked, chunk=rows.numel())
        if variant == "official":
            s = logits.softmax(dim=1).gather(1, x.targets[img, None]).squeeze(1)
            saliency.index_add_(0, img, s.view((-1,) + (1,) * len(size)).to(up.dtype) * up.squeeze(1))
        else:
            s = x.target(logits, img)
        scores[rows] = s.float()


@register_method("scorecam", bounds={"variant": SCORECAM_VARIANTS, "baseline": SCORECAM_BASELINES,
                                     "chunk_size": "int [0, inf)"},
                 needs_gradients=False,
                 # one forward per channel and image (constant channels share one baseline forward per batch)
                 cost=lambda p, layer: {"forward": layer["channels"]},
                 channel_weights=lambda p: p.get("variant", "pgc") != "official",  # official: a map
                 raw_resolution=lambda p: "input" if p.get("variant", "pgc") == "official" else None,
                 # 'official' scores the softmax probability of the class index, not the target
                 reads_target=lambda p: p.get("variant", "pgc") != "official",
                 summary="Score-CAM: channel weights from the scores of activation-masked inputs")
def scorecam(x: CamInputs, variant: str = "pgc", baseline: str = "mean", chunk_size: int = 0) -> Tensor:
    """Weights from the target score of the input masked by ``Norm(Up(A^k))`` for every channel k.

    The reference codes multiply the network's *normalised* input by the mask. cambench models
    take pixel images and normalise inside, so ``baseline`` says what masked-out pixels become:
    ``mean`` (default) the mean of the model's first ``Normalize``, i.e. the masked input is
    ``mean + m * (x - mean)`` = the normalised tensor times ``m``: every variant's "input" is the
    normalised tensor, as pytorch-grad-cam, torchcam and the authors' code see it when given the
    network behind the Normalize (a model without a Normalize: 0, its input is taken to be
    normalised already); ``black``: ``m * x`` in pixel space (those codes given the whole model).

    ``pgc`` (pytorch-grad-cam): masks up-sampled with align_corners=True then min-max normalised,
    softmax over the K target scores. ``torchcam``: masks min-max normalised at feature resolution,
    then up-sampled with align_corners=False; softmax over the scores (torchcam subtracts the
    unmasked input's score first, a per-image constant that the softmax ignores). ``official``
    (haofanwang/Score-CAM): up-sampled with align_corners=False then min-max normalised, softmax
    probability of the target class, the map accumulated from the un-normalised up-sampled
    activations (the code's min-max has no epsilon; ours keeps 1e-8). A constant channel (at
    feature resolution) has an all-zero mask: pgc / torchcam score it with the baseline image
    (``x`` fully masked out), official skips it.
    ``chunk_size`` is the number of masked inputs per forward (0: from the memory budget).
    """
    if variant not in SCORECAM_VARIANTS:
        raise CamError(f"scorecam variant must be one of {SCORECAM_VARIANTS}, got {variant!r}")
    if variant == "official" and x.targets is None:
        raise CamError("scorecam variant 'official' scores class probabilities; it needs class targets")
    images, acts = x.images, x.activations
    centre = baseline_colour(x.model, images, baseline)  # the user's model: the copy may fold Normalize
    n, k = acts.shape[:2]
    size = images.shape[2:]
    flat = acts.reshape(n * k, 1, *acts.shape[2:])
    lo = flat.flatten(1).min(dim=1).values
    hi = flat.flatten(1).max(dim=1).values
    constant = hi - lo <= 0                      # their mask is all zeros: the baseline image's score
    chunk = chunk_size or x.input_rows_per_chunk()
    scores = acts.new_zeros(n * k, dtype=torch.float32)
    saliency = images.new_zeros((n,) + tuple(size)) if variant == "official" else None
    live = (~constant).nonzero().squeeze(1)
    with x.fast_forwards() as fast_images:
        _masked_scores(x, fast_images, centre, variant, flat, live, k, chunk, scores, saliency)
        if variant != "official" and constant.any():
            # One forward of the baseline image serves every constant channel of every image.
            blank = images.new_zeros(images[:1].shape) + (0.0 if centre is None else centre)
            base = x.target(x.forward(blank).expand(n, -1), torch.arange(n, device=images.device))
            scores = torch.where(constant, base.repeat_interleave(k).float(), scores)
    if variant == "official":
        return saliency
    return scores.view(n, k).softmax(dim=1).to(acts.dtype)


def ablated_scores(x: CamInputs, values: Tensor, chunk_size: int = 0) -> Tensor:
    """Target scores (N, K) with channel k of the target layer set to ``values`` (N,), all (image,
    channel) rows replayed in chunks; only the model after the target layer runs when it can."""
    acts = x.activations
    n, k = acts.shape[:2]
    per_row = acts[0].numel() * acts.element_size() * REPLAY_MEMORY_FACTOR
    chunk = chunk_size or x.rows_per_chunk(per_row)
    out = acts.new_zeros(n * k, dtype=torch.float32)
    for i in range(0, n * k, chunk):
        img, channel = _rows(i, min(i + chunk, n * k), k, acts.device)
        rows = acts[img].clone()
        rows[torch.arange(img.numel(), device=acts.device), channel] = values[img].view(
            (-1,) + (1,) * len(x.spatial_dims))
        out[i:i + img.numel()] = x.target(x.replay(rows, img, chunk=img.numel()), img).float()
    return out.view(n, k)


@register_method("ablationcam", bounds={"ablation_value": "(-inf, inf)", "chunk_size": "int [0, inf)"},
                 needs_gradients=False, reads_target=True, channel_weights=True,
                 cost=lambda p, layer: {"head": layer["channels"]},  # a replay after the target layer per channel
                 flags=lambda x, params: (x.scores <= 0).to(torch.uint8) * FLAG_NONPOSITIVE_SCORE,
                 summary="Ablation-CAM: relative score drop when one channel is ablated")
def ablationcam(x: CamInputs, ablation_value: float | None = None, chunk_size: int = 0) -> Tensor:
    """w_k = (y^c - y^c with channel k set to the ablation value) / y^c.

    ``ablation_value`` None: 0 where the image's activations have minimum 0, else min - 1e7
    (pytorch-grad-cam's rule for layers with negative activations). Only the model after the
    target layer is re-run when it depends on nothing else (see ``CamInputs.replay``).
    Dividing by y^c inverts the weights where y^c < 0: such images get flag bit
    ``FLAG_NONPOSITIVE_SCORE`` (4), counted in the heatmap file's ``n_nonpositive_score``.
    """
    acts = x.activations
    n = acts.shape[0]
    if ablation_value is None:
        lows = acts.flatten(1).min(dim=1).values
        values = torch.where(lows == 0, torch.zeros_like(lows), lows - 1e7)
    else:
        values = acts.new_full((n,), float(ablation_value))
    y = x.scores.float()[:, None]
    return ((y - ablated_scores(x, values, chunk_size)) / y).to(acts.dtype)
