"""How concentrated a heatmap is, from the map alone (docs/metrics.md §12): Gini sparseness, entropy
complexity and pytorch-grad-cam's mean activation. Each sees the map flattened to a vector of
length n; none needs the model or a mask."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import MetricInputs, register_metric

GINI_EPS = 1e-7  # Quantus adds this to every entry, so an all-zero map is uniform (Gini 0)


def gini_index(maps: Tensor) -> Tensor:
    """Gini index (N,) of |map| as Quantus's ``Sparseness`` computes it (abs, divide by the max,
    add 1e-7, sort ascending, ``Σ (2i - n - 1) a_(i) / (n Σ a)``); normalised per map."""
    a = maps.flatten(1).double().abs()
    peak = a.amax(dim=1, keepdim=True)
    a = torch.where(peak > 0, a / torch.where(peak > 0, peak, 1.0), a) + GINI_EPS
    a = a.sort(dim=1).values
    n = a.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=a.device, dtype=a.dtype) - n - 1
    return ((a * weights).sum(dim=1) / (n * a.sum(dim=1))).float()


def contribution_entropy(maps: Tensor) -> Tensor:
    """Shannon entropy (N,), natural log, of the fractional contributions |a| / Σ|a| (0 log 0 = 0).
    A map with no mass is treated as uniform and gets the maximum, ln n."""
    a = maps.flatten(1).double().abs()
    total = a.sum(dim=1, keepdim=True)
    p = a / torch.where(total > 0, total, 1.0)
    h = -torch.special.xlogy(p, p).sum(dim=1)
    return torch.where(total.squeeze(1) > 0, h, math.log(a.shape[1])).float()


@register_metric("sparseness", higher_is_better=True, family="complexity",
                 summary="Gini index of the map's absolute values (Chalasani et al.; Quantus Sparseness)")
def sparseness(x: MetricInputs) -> Tensor:
    """Gini index of |map| in [0, 1): ~0 for a uniform map, ~(n-1)/n for a one-pixel map.

    Quantus's defaults (abs, max-normalisation) applied per map; Quantus normalises over the whole
    batch unless told the axes, which makes a map's score depend on its batch neighbours.
    """
    return gini_index(x.heatmaps)


@register_metric("complexity", higher_is_better=False, family="complexity",
                 summary="entropy of the map's fractional contributions (Bhatt et al.; Quantus Complexity)")
def complexity(x: MetricInputs) -> Tensor:
    """``H(|a| / Σ|a|)`` with the natural log (as ``scipy.stats.entropy``): 0 for a one-pixel map,
    ln n for a uniform one. An all-zero map is treated as uniform (ln n), the project's convention
    where the reference divides 0 by 0. Quantus adds 1e-12 inside the log; here 0 log 0 = 0 exactly."""
    return contribution_entropy(x.heatmaps)


@register_metric("mean_activation", higher_is_better=False, family="complexity",
                 summary="mean absolute map value, ||a||_1 / n (pytorch-grad-cam's ARCC 'Complexity')")
def mean_activation(x: MetricInputs) -> Tensor:
    """``‖a‖₁ / n``: pytorch-grad-cam's ``metrics.arcc.Complexity``, renamed because it is a
    different quantity from Bhatt et al.'s complexity. In [0, 1] for maps in [0, 1]."""
    return x.heatmaps.flatten(1).double().abs().mean(dim=1).float()
