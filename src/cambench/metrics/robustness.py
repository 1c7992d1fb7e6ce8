"""Robustness of heatmaps to input perturbations (docs/metrics.md §5).

Sarkar et al. (arXiv 2508.18154) name two properties of a robust CAM: **consistency** (the map stays
similar when the perturbation leaves the prediction unchanged) and **responsiveness** (it changes
when the prediction changes). The similarity measure, the per-group means and the combination rule
are our reading (the paper's text beyond the abstract was not available), so all are parameters:

- ``consistency``: ``sim(S, S~)`` on images whose prediction is unchanged;
- ``responsiveness``: ``1 - sim(S, S~)`` on images whose prediction changed;
- ``noise_robustness``: per image, consistency's value if unchanged, responsiveness's otherwise.
  With ``combine='pair_weighted'`` the dataset score is the plain mean of these values (C and R
  weighted by their share of pairs); with ``combine='harmonic'`` (default) the summary computes
  ``2CR / (C + R)`` from the two groups (:func:`combine_robustness`) and leaves the level out when
  no prediction flipped (C alone is then reported by ``consistency``);
- ``flip_rate``: 1 where the prediction changed; its mean is the flip rate of the level.

``max_sensitivity`` (Yeh et al., NeurIPS 2019; captum's ``sensitivity_max``) re-explains the image
under small uniform input noise and is independent of the sweep's perturbation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..counter_rng import perturbation_keys, uniform
from .base import MetricInputs, explained_batches, per_method_values, register_metric
from .similarities import SIMILARITIES, similarity

# --------------------------------------------------------------------------------------------
# Consistency, responsiveness, their combination, flip rate
# --------------------------------------------------------------------------------------------

COMBINE = ("harmonic", "pair_weighted")


def _pairs(x: MetricInputs, metric: str, name: str, top_percent: float) -> tuple[Tensor, Tensor]:
    x.require("reference", "predictions", "reference_predictions", metric=metric)
    sim = similarity(name, x.heatmaps, x.reference, metric, top_percent)
    return sim, x.predictions == x.reference_predictions


@register_metric("consistency", bounds={"similarity": tuple(SIMILARITIES), "top_percent": "(0, 100]"},
                 needs=("reference",), higher_is_better=True, family="robustness",
                 our_reading="the similarity (SSIM by default), per-group means; from Sarkar et al.'s abstract alone",
                 summary="similarity of clean and perturbed heatmaps where the prediction is unchanged")
def consistency(x: MetricInputs, similarity: str = "ssim", top_percent: float = 20.0) -> tuple[Tensor, Tensor]:
    sim, same = _pairs(x, "consistency", similarity, top_percent)
    return sim, same


@register_metric("responsiveness", bounds={"similarity": tuple(SIMILARITIES), "top_percent": "(0, 100]"},
                 needs=("reference",), higher_is_better=True, family="robustness",
                 our_reading="1 − similarity (SSIM by default), per-group means; from Sarkar et al.'s abstract alone",
                 summary="1 - similarity of clean and perturbed heatmaps where the prediction changed")
def responsiveness(x: MetricInputs, similarity: str = "ssim", top_percent: float = 20.0) -> tuple[Tensor, Tensor]:
    sim, same = _pairs(x, "responsiveness", similarity, top_percent)
    return 1 - sim, ~same


@register_metric("noise_robustness", bounds={"similarity": tuple(SIMILARITIES), "top_percent": "(0, 100]",
                         "combine": COMBINE},
                 needs=("reference",), higher_is_better=True, family="robustness",
                 aggregate="robustness",
                 our_reading="the similarity and the combination 2CR/(C + R); from Sarkar et al.'s abstract alone",
                 summary="consistency and responsiveness combined (harmonic mean of the two groups, or pair-weighted)")
def noise_robustness(x: MetricInputs, similarity: str = "ssim", top_percent: float = 20.0,
                     combine: str = "harmonic") -> Tensor:
    if combine not in COMBINE:
        raise ValueError(f"noise_robustness: combine must be one of {list(COMBINE)}, got {combine!r}")
    sim, same = _pairs(x, "noise_robustness", similarity, top_percent)
    return torch.where(same, sim, 1 - sim)


@register_metric("flip_rate", needs=("reference",), higher_is_better=None, family="robustness", compare=False,
                 our_reading="the flip rate beside consistency and responsiveness; from Sarkar et al.'s abstract alone",
                 summary="1 where the perturbation changed the prediction (its mean is the level's flip rate)")
def flip_rate(x: MetricInputs) -> Tensor:
    x.require("predictions", "reference_predictions", metric="flip_rate")
    return (x.predictions != x.reference_predictions).float()


def combine_robustness(values: np.ndarray, unchanged: np.ndarray) -> float:
    """``2CR / (C + R)`` from per-image ``noise_robustness`` values and the unchanged-prediction mask;
    NaN when either group is empty (then Rob is undefined, docs/metrics.md §5) or C + R = 0."""
    if unchanged.all() or not unchanged.any():
        return math.nan
    c, r = values[unchanged].mean(), values[~unchanged].mean()
    return float(2 * c * r / (c + r)) if c + r > 0 else math.nan


# --------------------------------------------------------------------------------------------
# Max-sensitivity
# --------------------------------------------------------------------------------------------

@register_metric("max_sensitivity", bounds={"radius": "(0, inf)", "samples": "int [1, inf)"},
                 needs=("model", "method"), higher_is_better=False, family="robustness",
                 # one engine pass of every method of the table per draw (cambench.plan)
                 cost=lambda p, layer: {"explain": p["samples"], "per": "table",
                                        "once": ("max_sensitivity", repr(sorted(p.items())))},
                 summary="largest relative change of the heatmap under uniform input noise of a small radius")
def max_sensitivity(x: MetricInputs, radius: float = 0.02, samples: int = 10, normalise: bool = True,
                    seed: int = 0) -> Tensor:
    """``max_j ||Φ(x + δ_j) − Φ(x)||_F / ||Φ(x)||_F`` over ``samples`` draws δ_j ~ U[−radius, radius]
    per element (unclipped, as captum's default perturbation), the target class held fixed.

    Φ(x) is the given heatmap (the stored one in the workflow; its float16 rounding, ~5e-4 of a map
    value, is far below the changes measured), so each draw costs one CAM pass. ``seed`` selects
    the draws. ``normalise`` divides by ||Φ(x)|| (captum and Quantus do; a zero map divides by 1).
    Noise comes from the counter generator keyed by image, so the value does not depend on the
    batch. Cost: ``samples`` extra CAM computations per image; in a table of several methods, each
    draw is one engine pass for all of them (:func:`~cambench.metrics.per_method_values`).
    """
    x.require("method", metric="max_sensitivity")
    if radius <= 0 or samples < 1:
        raise ValueError(f"max_sensitivity: radius must be > 0 and samples >= 1, got {radius}, {samples}")
    keys = x.image_keys()
    n, dev = x.images.shape[0], x.images.device

    def compute(methods: dict[str, dict], heatmaps: dict[str, Tensor]) -> dict[str, Tensor]:
        worst = {m: torch.zeros(n, dtype=torch.float64, device=dev) for m in methods}
        norms = {}  # ||Φ(x)|| per method, once (a zero map divides by 1)
        for m, h in heatmaps.items():
            norm = h.to(dev).flatten(1).double().norm(dim=1)
            norms[m] = torch.where(norm == 0, torch.ones_like(norm), norm) if normalise else torch.ones_like(norm)
        for j in range(samples):  # one engine pass per draw over the whole batch, for every method
            k = perturbation_keys(keys, "max_sensitivity", float(j), seed)
            delta = (2 * uniform(k, tuple(x.images.shape[1:]), 7) - 1).to(x.images) * radius
            for rows, maps in explained_batches(x, methods, x.images + delta):
                for m, explained in maps.items():
                    base = heatmaps[m][rows].to(dev).flatten(1).double()
                    change = (explained.flatten(1).double() - base).norm(dim=1) / norms[m][rows]
                    worst[m][rows] = torch.maximum(worst[m][rows], change)
        return {m: w.float() for m, w in worst.items()}

    return per_method_values(x, ("max_sensitivity", radius, samples, normalise, seed), compute)
