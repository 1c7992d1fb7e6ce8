"""Gradient-free CAMs from one forward pass: CAM and the Eigen-CAM family (docs/methods.md §2.1, §2.9)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..engine import CamError, CamInputs, register_method, resolve_layer


@register_method("cam", needs_gradients=False, reads_target=False,  # the class index only
                 cost={}, channel_weights=True,  # nothing beyond the shared forward (cambench.plan)
                 applies=lambda model, params: bool(params.get("fc_layer") or getattr(model, "cam_fc_layer", "")),
                 summary="CAM: the head's class weights on the activations")
def cam(x: CamInputs, fc_layer: str = "") -> Tensor:
    """Zhou et al.: w^c of the final linear layer. Defined for GAP + linear heads only.

    ``fc_layer`` names that layer; empty means the model's own ``cam_fc_layer`` attribute (set
    by cambench's architectures). The head is never guessed.
    """
    name = fc_layer or getattr(x.model, "cam_fc_layer", "")
    if not name:
        raise CamError("cam needs 'fc_layer': the dotted name of the linear layer after global average pooling")
    fc = resolve_layer(x.model, name)
    if not isinstance(fc, nn.Linear):
        raise CamError(f"cam: '{name}' is a {type(fc).__name__}, expected nn.Linear")
    if fc.in_features != x.activations.shape[1]:
        raise CamError(f"cam: '{name}' takes {fc.in_features} features but the target layer has "
                       f"{x.activations.shape[1]} channels; CAM needs features -> GAP -> linear")
    if x.targets is None:
        raise CamError("cam needs class targets, not a callable")
    return fc.weight.detach()[x.targets].to(x.activations.dtype)


def principal_projection(acts: Tensor, centre: bool = True, sign_correction: bool = True) -> Tensor:
    """Project each position's channel vector on the first right singular vector (batched SVD)."""
    n, k = acts.shape[:2]
    o = acts.reshape(n, k, -1).transpose(1, 2).float()          # (N, Z, K), rows are positions
    o = torch.nan_to_num(o)
    if centre:
        o = o - o.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(o, full_matrices=False)
    proj = (o @ vh[:, 0, :, None]).squeeze(2)                    # (N, Z)
    if sign_correction:  # SVD's sign is arbitrary: make the larger-magnitude extreme positive
        flip = proj.min(dim=1).values.abs() > proj.max(dim=1).values.abs()
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape((n,) + acts.shape[2:]).to(acts.dtype)


@register_method("eigencam", needs_gradients=False, reads_target=False, cost={},
                 our_reading="sign_correction (on by default)",
                 summary="Eigen-CAM: projection on the first principal component (class-agnostic)")
def eigencam(x: CamInputs, centre: bool = True, sign_correction: bool = True) -> Tensor:
    return principal_projection(x.activations, centre, sign_correction)


@register_method("eigengradcam", reads_target=True, cost={},
                 our_reading="sign_correction (on by default)",
                 summary="Eigen-Grad-CAM: Eigen-CAM of gradient x activation")
def eigengradcam(x: CamInputs, centre: bool = True, sign_correction: bool = True) -> Tensor:
    return principal_projection(x.gradients * x.activations, centre, sign_correction)
