"""Perturbation CAMs: channel weights from batched model evaluations (methods.md §2.7, §2.8).

Masked inputs (Score-CAM) or ablated activations (Ablation-CAM) of every image and channel are
stacked into rows ``(image, channel)`` and evaluated chunk by chunk, the chunk sized by the
memory budget; everything stays on the images' device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..engine import REPLAY_MEMORY_FACTOR, CamError, CamInputs, register_method
from ..utils import upsample

SCORECAM_VARIANTS = ("pgc", "torchcam", "official")
MASK_EPS = 1e-8  # pytorch-grad-cam's epsilon in the mask normalisation


def _rows(start: int, stop: int, k: int, device) -> tuple[Tensor, Tensor]:
    rows = torch.arange(start, stop, device=device)
    return rows // k, rows % k


def _masked_scores(x: CamInputs, images: Tensor, variant: str, flat: Tensor, live: Tensor, k: int, chunk: int,
                   align: bool, scores: Tensor, saliency: Tensor | None) -> None:
    """Fill ``scores`` (and the 'official' saliency) for the (image, channel) rows ``live``, chunk by chunk."""
    size = images.shape[2:]
    # One buffer for every chunk's masked inputs, in the images' (channels-last) layout: a fresh
    # allocation per chunk made the forwards measurably slower on CPU.
    buffer = torch.empty_like(images[:1]).expand(min(chunk, live.numel()), *images.shape[1:]).clone(
        memory_format=torch.preserve_format)
    for i in range(0, live.numel(), chunk):
        rows = live[i:i + chunk]
        img = rows // k
        up = upsample(flat[rows], size, align)                           # (M, 1, *S)
        u_lo, u_hi = torch.aminmax(up.flatten(1), dim=1)                  # one pass for both
        shape = (-1,) + (1,) * (up.ndim - 1)
        masks = (up - u_lo.view(shape)) / (u_hi - u_lo + MASK_EPS).view(shape)
        masked = torch.mul(images[img], masks, out=buffer[:rows.numel()])
        logits = x.forward(masked, chunk=rows.numel())
        if variant == "official":
            s = logits.softmax(dim=1).gather(1, x.targets[img, None]).squeeze(1)
            saliency.index_add_(0, img, s.view((-1,) + (1,) * len(size)).to(up.dtype) * up.squeeze(1))
        else:
            s = x.target(logits, img)
        scores[rows] = s.float()


@register_method("scorecam", needs_gradients=False,
                 summary="Score-CAM: channel weights from the scores of activation-masked inputs")
def scorecam(x: CamInputs, variant: str = "pgc", chunk_size: int = 0) -> Tensor:
    """Weights from the target score of ``x * Norm(Up(A^k))`` for every channel k.

    ``pgc`` (pytorch-grad-cam): masks up-sampled with align_corners=True, softmax over the K
    logit scores. ``torchcam``: align_corners=False, softmax over score minus the zero-image
    score. ``official`` (haofanwang/Score-CAM): softmax probability of the target class, constant
    channels skipped, map accumulated from the un-normalised up-sampled activations.
    ``chunk_size`` is the number of masked inputs per forward (0: from the memory budget).
    """
    if variant not in SCORECAM_VARIANTS:
        raise CamError(f"scorecam variant must be one of {SCORECAM_VARIANTS}, got {variant!r}")
    if variant == "official" and x.targets is None:
        raise CamError("scorecam variant 'official' scores class probabilities; it needs class targets")
    images, acts = x.images, x.activations
    n, k = acts.shape[:2]
    size = images.shape[2:]
    align = variant == "pgc"
    flat = acts.reshape(n * k, 1, *acts.shape[2:])
    lo = flat.flatten(1).min(dim=1).values
    hi = flat.flatten(1).max(dim=1).values
    constant = hi - lo <= 0                      # their mask is all zeros: the zero image's score
    chunk = chunk_size or x.input_rows_per_chunk()
    scores = acts.new_zeros(n * k, dtype=torch.float32)
    saliency = images.new_zeros((n,) + tuple(size)) if variant == "official" else None
    live = (~constant).nonzero().squeeze(1)
    with x.fast_forwards() as fast_images:
        _masked_scores(x, fast_images, variant, flat, live, k, chunk, align, scores, saliency)
    if variant == "official":
        return saliency
    if constant.any():  # one forward of the zero image per batch image serves every constant channel
        zero_scores = x.target(x.forward(torch.zeros_like(images)), torch.arange(n, device=images.device))
        scores = torch.where(constant, zero_scores.repeat_interleave(k).float(), scores)
    scores = scores.view(n, k)
    if variant == "torchcam":
        baseline = x.target(x.forward(torch.zeros_like(images)), torch.arange(n, device=images.device))
        scores = scores - baseline[:, None].float()
    return scores.softmax(dim=1).to(acts.dtype)


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


@register_method("ablationcam", needs_gradients=False,
                 summary="Ablation-CAM: relative score drop when one channel is ablated")
def ablationcam(x: CamInputs, ablation_value: float | None = None, chunk_size: int = 0) -> Tensor:
    """w_k = (y^c - y^c with channel k set to the ablation value) / y^c.

    ``ablation_value`` None: 0 where the image's activations have minimum 0, else min - 1e7
    (pytorch-grad-cam's rule for layers with negative activations). Only the model after the
    target layer is re-run when it depends on nothing else (see ``CamInputs.replay``).
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
