"""Gradient-family CAMs: channel weights from activations A and gradients G (methods.md §2).

Each function returns channel weights (N, K); the engine forms sum_k w_k A^k, applies ReLU,
normalisation and up-sampling. Sums run over every spatial axis, so all work in 2D and 3D.
"""
from __future__ import annotations

from torch import Tensor

from ..engine import CamInputs, register_method


@register_method("gradcam", needs_gradients=True, summary="Grad-CAM: spatial mean of the gradient")
def gradcam(x: CamInputs) -> Tensor:
    return x.gradients.mean(dim=x.spatial_dims)


@register_method("gradcampp", needs_gradients=True,
                 summary="Grad-CAM++: closed-form pixel coefficients g^2 / (2 g^2 + S_k g^3)")
def gradcampp(x: CamInputs, eps: float = 1e-6) -> Tensor:
    g, a, dims = x.gradients, x.activations, x.spatial_dims
    g2 = g * g
    s = a.sum(dim=dims, keepdim=True)
    alpha = g2 / (2 * g2 + s * g2 * g + eps)
    alpha = alpha.where(g != 0, 0.0)  # no gradient, no coefficient (as in the reference code)
    return (alpha * g.clamp_min(0)).sum(dim=dims)


@register_method("xgradcam", needs_gradients=True,
                 summary="XGrad-CAM: activation-weighted spatial sum of the gradient")
def xgradcam(x: CamInputs, eps: float = 1e-7) -> Tensor:
    a, dims = x.activations, x.spatial_dims
    s = a.sum(dim=dims, keepdim=True)
    return (x.gradients * a / (s + eps)).sum(dim=dims)
