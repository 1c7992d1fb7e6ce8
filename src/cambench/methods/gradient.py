"""Gradient-family CAMs: channel weights or element-wise maps from activations A and gradients G.

Channel-weight methods return (N, K); the engine forms sum_k w_k A^k, applies ReLU, normalisation
and up-sampling. Element-wise methods return the signed map. Sums run over every spatial axis, so
all work in 2D and 3D (docs/methods.md §2.2 to §2.6).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..engine import CamError, CamInputs, register_method
from ..utils import upsample


# cost {}: nothing beyond the forward + backward that every gradient method shares (cambench.plan)
@register_method("gradcam", reads_target=True, cost={}, channel_weights=True,
                 summary="Grad-CAM: spatial mean of the gradient")
def gradcam(x: CamInputs) -> Tensor:
    return x.gradients.mean(dim=x.spatial_dims)


@register_method("gradcampp", bounds={"eps": "(0, inf)"},
                 reads_target=True, cost={}, channel_weights=True,
                 summary="Grad-CAM++: closed-form pixel coefficients g^2 / (2 g^2 + S_k g^3)")
def gradcampp(x: CamInputs, eps: float = 1e-6) -> Tensor:
    g, a, dims = x.gradients, x.activations, x.spatial_dims
    g2 = g * g
    s = a.sum(dim=dims, keepdim=True)
    alpha = g2 / (2 * g2 + s * g2 * g + eps)
    alpha = alpha.where(g != 0, 0.0)  # no gradient, no coefficient (as in the reference code)
    return (alpha * g.clamp_min(0)).sum(dim=dims)


@register_method("xgradcam", bounds={"eps": "(0, inf)"},
                 reads_target=True, cost={}, channel_weights=True,
                 summary="XGrad-CAM: activation-weighted spatial sum of the gradient")
def xgradcam(x: CamInputs, eps: float = 1e-7) -> Tensor:
    a, dims = x.activations, x.spatial_dims
    s = a.sum(dim=dims, keepdim=True)
    return (x.gradients * a / (s + eps)).sum(dim=dims)


@register_method("hirescam", reads_target=True, cost={},
                 summary="HiResCAM: element-wise gradient x activation summed over channels")
def hirescam(x: CamInputs) -> Tensor:
    return (x.gradients * x.activations).sum(dim=1)


@register_method("gradcam_elementwise", reads_target=True, cost={},
                 summary="Grad-CAM element-wise: ReLU of each channel's gradient x activation, summed")
def gradcam_elementwise(x: CamInputs) -> Tensor:
    return (x.gradients * x.activations).clamp_min(0).sum(dim=1)


@register_method("layercam", reads_target=True, cost={},
                 summary="LayerCAM (one layer): ReLU(G) x A summed over channels")
def layercam(x: CamInputs) -> Tensor:
    return _layercam_map(x.activations, x.gradients)


def _layercam_map(a: Tensor, g: Tensor) -> Tensor:
    return (g.clamp_min(0) * a).sum(dim=1).clamp_min(0)


def _resize(maps: Tensor, size) -> Tensor:
    return upsample(maps.unsqueeze(1), size).squeeze(1)


def _per_map(maps: Tensor, op) -> Tensor:
    return op(maps.flatten(1), dim=1).values.view((-1,) + (1,) * (maps.ndim - 1))


LAYERCAM_FUSIONS = ("max", "mean", "torchcam")
TORCHCAM_NORM_EPS = 1e-8  # torchcam's epsilon in _CAM._normalize


@register_method("layercam_ms", bounds={"fusion": LAYERCAM_FUSIONS, "gamma": "(0, inf)"},
                 reads_target=True, extra_layers=lambda p: list(p["layers"]), cost={},
                 raw_resolution=lambda p: list(p["layers"]),  # fused at the finest of these and the target
                 our_reading="fusion 'max' (each map ÷ its max, tanh γ on the shallower, max) as the paper's Eq. 9",
                 summary="LayerCAM fused over several layers from one backward pass")
def layercam_ms(x: CamInputs, layers: list = (), fusion: str = "max", gamma: float = 2.0) -> Tensor:
    """Fuse the target layer's LayerCAM with those of ``layers`` (usually shallower stages).

    ``max`` [our reading] of the paper's Eq. 9: each map divided by its max, the shallower
    layers' maps squashed by tanh(gamma * M) (the target layer's is not), all up-sampled to the
    finest map, fused by element-wise max. ``torchcam`` [checked-code] torchcam's LayerCAM with
    ``fuse_cams``: every map (the target layer's too) min-max normalised (eps 1e-8), then
    tanh(gamma * M), up-sampled (align_corners=False) to the largest size on each axis, fused by
    element-wise max. ``mean`` (pytorch-grad-cam): each map min-max normalised and up-sampled to
    the input, then averaged.
    """
    if not layers:
        raise CamError("layercam_ms needs 'layers': the shallower layers fused with the target layer")
    if fusion not in LAYERCAM_FUSIONS:
        raise CamError(f"layercam_ms fusion must be one of {LAYERCAM_FUSIONS}, got {fusion!r}")
    maps = [_layercam_map(*x.layers[name]) for name in layers] + [_layercam_map(x.activations, x.gradients)]
    if fusion == "torchcam":
        size = tuple(max(sizes) for sizes in zip(*(m.shape[1:] for m in maps)))
        scaled = []
        for m in maps:
            lo = _per_map(m, torch.min)
            m = m - lo
            scaled.append(_resize(torch.tanh(gamma * m / (_per_map(m, torch.max) + TORCHCAM_NORM_EPS)), size))
        return torch.stack(scaled).amax(dim=0)
    if fusion == "mean":
        size = x.images.shape[2:]
        normed = []
        for m in maps:
            lo, hi = _per_map(m, torch.min), _per_map(m, torch.max)
            normed.append(_resize((m - lo) / (hi - lo + 1e-7), size))
        return torch.stack(normed).mean(dim=0)
    size = max((m.shape[1:] for m in maps), key=lambda s: torch.Size(s).numel())
    fused = None
    for i, m in enumerate(maps):
        m = m / (_per_map(m, torch.max) + 1e-7)
        if i < len(maps) - 1:
            m = torch.tanh(gamma * m)
        m = _resize(m, size)
        fused = m if fused is None else torch.maximum(fused, m)
    return fused
