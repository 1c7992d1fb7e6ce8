"""Faithfulness metrics: the model's score as the most salient pixels are removed (methods.md §3.2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import MetricInputs, chunk_size, model_scores, register_metric


def removal_curve(x: MetricInputs, steps: int, fill: Tensor, score: str) -> Tensor:
    """Scores (N, steps + 1) after removing the top t * ceil(P / steps) pixels, t = 0..steps.

    All (image, step) pairs are evaluated in batches sized by the memory budget; the masked inputs
    are built on the device from a rank map, never one image at a time.
    """
    n, c = x.images.shape[:2]
    p = math.prod(x.images.shape[2:])
    order = x.heatmaps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(p, device=order.device).expand(n, p))
    per_step = math.ceil(p / steps)
    removed = (torch.arange(steps + 1, device=order.device) * per_step).clamp_max(p)
    flat = x.images.flatten(2)                       # (N, C, P)
    fill = fill.to(flat).view(1, c, 1)
    pairs = n * (steps + 1)
    step_size = chunk_size(c * p * flat.element_size() * 3, x.memory_mb)
    out = torch.empty(pairs, device=flat.device, dtype=torch.float32)
    for start in range(0, pairs, step_size):
        pair = torch.arange(start, min(start + step_size, pairs), device=flat.device)
        img, t = pair // (steps + 1), pair % (steps + 1)
        gone = (rank[img] < removed[t, None]).unsqueeze(1)          # (B, 1, P)
        batch = torch.where(gone, fill, flat[img]).view((-1,) + tuple(x.images.shape[1:]))
        out[pair] = model_scores(x.model, batch, x.targets[img], score).float()
    return out.view(n, steps + 1)


def trapezoid_auc(curve: Tensor) -> Tensor:
    """Normalised trapezoid over [0, 1]: (sum s_t - s_0/2 - s_T/2) / T."""
    steps = curve.shape[1] - 1
    return (curve.sum(dim=1) - curve[:, 0] / 2 - curve[:, -1] / 2) / steps


def _fill(x: MetricInputs, substrate: str) -> Tensor:
    c = x.images.shape[1]
    if substrate == "mean":
        if x.fill is None:
            raise ValueError("substrate 'mean' needs the dataset mean colour (fill)")
        return x.fill
    if substrate == "zero":
        return torch.zeros(c, device=x.images.device)
    raise ValueError(f"substrate must be 'mean' or 'zero', got {substrate!r}")


@register_metric("deletion_auc", needs=("model",), higher_is_better=False, family="faithfulness",
                 summary="area under the target score as the most salient pixels are removed")
def deletion_auc(x: MetricInputs, steps: int = 64, substrate: str = "mean", score: str = "prob") -> Tensor:
    """RISE deletion. ``substrate='mean'`` fills with the dataset mean colour, which is RISE's zero
    of the normalised tensor when the model normalises with the same mean."""
    x.require("model", metric="deletion_auc")
    if steps < 1:
        raise ValueError(f"deletion_auc: steps must be >= 1, got {steps}")
    return trapezoid_auc(removal_curve(x, steps, _fill(x, substrate), score))
