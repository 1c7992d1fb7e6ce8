"""Robustness of heatmaps to input perturbations (methods.md §3.5; the similarity and the
'consistency over unchanged predictions' rule are our reading of Sarkar et al.)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from . import MetricInputs, register_metric


def ssim(a: Tensor, b: Tensor, win_size: int = 7, data_range: float = 1.0,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM per map pair (N,), 2D or 3D, equal to ``skimage.metrics.structural_similarity``
    with its defaults (uniform window of 7, sample covariance, mean over fully-inside windows)."""
    nd = a.ndim - 1
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    win = min(win_size, *a.shape[1:])
    win -= 1 - win % 2  # odd, as skimage requires
    x, y = a.unsqueeze(1).double(), b.unsqueeze(1).double()
    mean = lambda t: pool(t, win, stride=1)  # noqa: E731  (valid windows only == skimage's crop)
    ux, uy = mean(x), mean(y)
    cov_norm = win ** nd / (win ** nd - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).float()


def pearson(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation per map pair (N,); 0 when either map is constant."""
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)).float()


SIMILARITIES = {"ssim": ssim, "pearson": pearson}


@register_metric("consistency", needs=("reference",), higher_is_better=True, family="robustness",
                 summary="similarity of clean and perturbed heatmaps where the prediction is unchanged")
def consistency(x: MetricInputs, similarity: str = "ssim") -> tuple[Tensor, Tensor]:
    x.require("reference", "predictions", "reference_predictions", metric="consistency")
    if similarity not in SIMILARITIES:
        raise ValueError(f"consistency: similarity must be one of {sorted(SIMILARITIES)}, got {similarity!r}")
    sim = SIMILARITIES[similarity](x.heatmaps, x.reference)
    return sim, x.predictions == x.reference_predictions
