"""AME-CAM: attentive aggregation of a multi-exit model's exit maps (docs/methods.md §2.15).

Not a post-hoc method: it reads the exits and the trained aggregator of a ``multi_exit_cnn``
model (cambench.models.multi_exit). Cost: one extra forward pass (every stage's exit), no
backward; ``invert="auto"`` adds two forwards of deleted images per image.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..engine import CamError, CamInputs, register_method

INVERT_CHOICES = ("true", "false", "auto")


def _invert_mode(invert) -> str:
    if isinstance(invert, str) and invert.lower() in INVERT_CHOICES:
        return invert.lower()
    raise CamError(f"amecam: invert must be one of {INVERT_CHOICES}, got {invert!r}")


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    return (maps - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def _deletion_drops(x: CamInputs, maps: Tensor, rows: Tensor, fraction: float) -> Tensor:
    """Target-score drop (M,) when the top ``fraction`` of each map's pixels is deleted.

    ``maps`` (M, *S) belong to images ``rows`` (M,). Deleted pixels are set to the model's
    normalisation mean (the dataset mean in pixel space, zero after the model's own
    normalisation), like the deletion metric's "zeros (normalised)" substrate.
    """
    images = x.images[rows]
    m = images.shape[0]
    flat = maps.flatten(1)
    k = max(1, math.ceil(fraction * flat.shape[1]))
    top = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, flat.topk(k, dim=1).indices, True)
    mask = top.view((m, 1) + images.shape[2:])
    mean = getattr(getattr(x.model, "normalize", None), "mean", None)
    fill = mean.to(images) if isinstance(mean, Tensor) and mean.numel() == images.shape[1] else \
        images.new_zeros(images.shape[1])
    deleted = torch.where(mask, fill.view((1, -1) + (1,) * (images.ndim - 2)), images)
    return x.scores[rows] - x.target(x.forward(deleted), rows)


@register_method("amecam", bounds={"invert": INVERT_CHOICES, "auto_fraction": "(0, 1)"},
                 needs_gradients=False,
                 # the exits are one more forward; invert 'auto' two forwards of deleted images
                 cost=lambda p, layer: {"forward": 3 if _invert_mode(p["invert"]) == "auto" else 1},
                 raw_resolution="input",  # the signed map is built at input resolution (the heatmap file's /raw)
                 # the exit maps of the class index; only invert "auto" scores the target (the polarity)
                 reads_target=lambda p: str(p.get("invert", "true")).lower() == "auto",
                 applies=lambda model, params: hasattr(model, "exit_maps") and hasattr(model, "aggregate"),
                 our_reading="multi-class exits (the paper's have one channel) and invert 'auto'",
                 summary="AME-CAM: attention-weighted aggregation of a multi-exit model's exit maps "
                         "(needs architecture 'multi_exit_cnn' with a trained aggregator)")
def amecam(x: CamInputs, invert: str = "true", include_exits: bool = True, auto_fraction: float = 0.2) -> Tensor:
    """The code's final map ``mean{M_1..M_L, M_AME}`` (or ``M_AME`` alone), min-max, then ``1 - map``.

    ``include_exits``: True gives the mean of the L up-sampled exit maps and ``M_AME`` (the code's
    ``average_map``); False gives ``M_AME`` alone. Maps are taken for the engine's target class
    (our n-class generalisation of the one-channel tumour exits).

    ``invert``: "true" (the code's default: the final map is inverted after min-max), "false",
    or "auto" -- **our reading** of "the polarity that agrees with the classifier": per image,
    the polarity whose top ``auto_fraction`` (default 0.2, our reading) pixels, set to the
    dataset mean, lower the target logit more (2 batched forwards per image).
    Note: with our cross-entropy exits the target class's exit map is class evidence, high on
    the object, so "false" (or "auto") is usually the right polarity for these models; "true"
    stays the default because it is the code's.

    Returns a non-negative map at input resolution whose min-max is ``Norm(m)`` or ``1 - Norm(m)``:
    ``m - min m`` or ``max m - m`` (a plain ``-m`` would be zeroed by the engine's ReLU).
    """
    mode = _invert_mode(invert)
    if not isinstance(include_exits, bool):
        raise CamError(f"amecam: include_exits must be true or false, got {include_exits!r}")
    if not 0 < float(auto_fraction) < 1:
        raise CamError(f"amecam: auto_fraction must be in (0, 1), got {auto_fraction!r}")
    model = x.model
    if not callable(getattr(model, "ame_maps", None)):
        raise CamError(f"amecam needs a multi-exit model with an exit aggregator (architecture "
                       f"'multi_exit_cnn'); got {type(model).__name__}")
    trained = getattr(model, "aggregator_trained", None)
    if trained is not None and not bool(trained):
        raise CamError("amecam: the model's exit aggregator was never trained; run "
                       "cambench.models.multi_exit.train_aggregator after train_multi_exit")
    if x.targets is None:
        raise CamError("amecam reads the exit maps of a class; give class targets, not a callable")
    with torch.no_grad():
        exit_maps, ame, _ = model.ame_maps(x.images, x.targets)
        final = torch.cat([exit_maps, ame.unsqueeze(1)], dim=1).mean(dim=1) if include_exits else ame
    n = final.shape[0]
    lo = final.flatten(1).min(dim=1).values.view((n,) + (1,) * (final.ndim - 1))
    hi = final.flatten(1).max(dim=1).values.view((n,) + (1,) * (final.ndim - 1))
    plain, inverted = final - lo, hi - final
    if mode == "false":
        return plain
    if mode == "true":
        return inverted
    # auto: both polarities of every image deleted and scored in one batched evaluation.
    norm = _minmax(final)
    rows = torch.arange(n, device=final.device).repeat(2)
    drops = _deletion_drops(x, torch.cat([norm, 1 - norm]), rows, float(auto_fraction)).view(2, n)
    flip = (drops[1] > drops[0]).view((n,) + (1,) * (final.ndim - 1))
    return torch.where(flip, inverted, plain)

