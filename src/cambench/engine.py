"""The CAM engine: hooks, batching, targets, up-sampling and normalisation, owned once.

A method is a small registered function that receives a :class:`CamInputs` (activations, gradients,
target scores, logits) for a whole batch and returns either channel weights ``(N, K)`` or a signed
map ``(N, *spatial)`` at feature resolution. Everything else happens here, identically for every
method, in 2D ``(N, C, H, W)`` and 3D ``(N, C, D, H, W)``.

Gradient capture runs the trunk (everything before the target layer) without recording autograd
history; recording starts at the target layer's output, and ``torch.autograd.grad`` asks only for
the gradient of the target scores with respect to that output (never parameter gradients).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry
from .utils import eval_mode

METHODS = Registry("method")
register_method = METHODS.register

NORM_EPS = 1e-7  # pytorch-grad-cam's epsilon in min-max normalisation (methods.md §1.1)

# Bits of the per-image flag written next to every heatmap.
FLAG_CONSTANT = 1   # the map had no spread (constant before normalisation) -> stored as zeros
FLAG_NONFINITE = 2  # NaN/Inf appeared in the signed map and were replaced by 0

Targets = None | Tensor | Sequence[int] | Callable[[Tensor], Tensor]


class CamError(ValueError):
    """A user mistake in a call to the engine (layer, targets, method, input shape)."""


@dataclass
class CamInputs:
    """What a method sees: one batch, everything on the images' device."""

    activations: Tensor            # (N, K, *spatial) output of the target layer
    gradients: Tensor | None       # d scores / d activations, same shape; None if not requested
    scores: Tensor                 # (N,) target scores the gradients were taken of (logits by default)
    logits: Tensor                 # (N, n_classes) model output
    targets: Tensor | None         # (N,) target class indices; None when the target is a callable

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        return tuple(range(2, self.activations.ndim))


@dataclass
class CamResult:
    maps: dict[str, Tensor]        # method -> (N, *input_spatial) in [0, 1]
    raw: dict[str, Tensor]         # method -> (N, *feature_spatial) signed, un-normalised map
    flags: dict[str, Tensor]       # method -> (N,) uint8 bit flags (FLAG_*)
    logits: Tensor                 # (N, n_classes)
    targets: Tensor                # (N,) target class (-1 where the target was a callable)
    scores: Tensor                 # (N,) target score
    params: dict[str, dict] = field(default_factory=dict)

    @property
    def predictions(self) -> Tensor:
        return self.logits.argmax(dim=1)


# --------------------------------------------------------------------------------------------
# Layers and targets
# --------------------------------------------------------------------------------------------

def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A module, or a dotted name such as ``"layer4"``, ``"features.28"`` or ``"layer4.-1"``."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise CamError("target_layer is a module that is not part of the model")
        return layer
    if not isinstance(layer, str) or not layer:
        raise CamError(f"target_layer must be a module or a dotted name, got {layer!r}")
    module = model
    for part in layer.split("."):
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if not -len(module) <= idx < len(module):
                raise CamError(f"target_layer '{layer}': index {idx} out of range for a container of {len(module)}")
            module = module[idx]
        else:
            raise CamError(f"target_layer '{layer}': no submodule '{part}'; "
                           f"children here: {', '.join(children) or 'none'}")
    return module


def _target_scores(logits: Tensor, targets: Targets) -> tuple[Tensor, Tensor | None]:
    """Scores (N,) to explain, and the class indices when the target is a class."""
    n = logits.shape[0]
    if callable(targets) and not isinstance(targets, Tensor):
        scores = targets(logits)
        if not isinstance(scores, Tensor) or scores.shape != (n,):
            raise CamError(f"a callable target must return a tensor of shape ({n},) from the logits, "
                           f"got {getattr(scores, 'shape', type(scores))}")
        return scores, None
    if targets is None:
        idx = logits.detach().argmax(dim=1)
    else:
        idx = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
        if idx.numel() != n:
            raise CamError(f"got {idx.numel()} targets for {n} images; give one target per image")
        if (idx < 0).any() or (idx >= logits.shape[1]).any():
            raise CamError(f"target class out of range [0, {logits.shape[1]})")
    return logits.gather(1, idx[:, None]).squeeze(1), idx


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------

def capture(model: nn.Module, images: Tensor, layer: nn.Module, targets: Targets = None,
            need_gradients: bool = True) -> CamInputs:
    """One forward (and one backward from the scores to ``layer`` if ``need_gradients``)."""
    seen: list[Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, Tensor):
            raise CamError(f"target layer returned {type(output).__name__}, expected a tensor")
        if seen:
            raise CamError("the target layer ran more than once in one forward pass; "
                           "choose a module that is called once (e.g. a block, not a shared ReLU)")
        if not need_gradients:
            seen.append(output.detach())
            return None
        # Start recording here: the trunk ran without history, the head records w.r.t. this leaf.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        seen.append(leaf)
        return leaf.clone()  # a non-leaf, so in-place ops after the layer (ReLU(inplace)) are legal

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():  # the hook re-enables recording from the target layer on
            logits = model(images)
    finally:
        handle.remove()
    if not seen:
        raise CamError("the target layer was not called during the forward pass")
    acts = seen[0]
    with torch.enable_grad() if need_gradients else torch.no_grad():
        scores, idx = _target_scores(logits, targets)
    grads = None
    if need_gradients:
        if not scores.requires_grad:
            raise CamError("the target score does not depend on the target layer")
        # Images are independent in eval mode, so the gradient of the sum is per-image.
        (grads,) = torch.autograd.grad(scores.sum(), acts)
    return CamInputs(acts.detach(), grads, scores.detach(), logits.detach(),
                     None if idx is None else idx.detach())


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------

def _minmax(maps: Tensor, eps: float = NORM_EPS) -> tuple[Tensor, Tensor]:
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    out = (maps - lo.view(shape)) / (hi - lo + eps).view(shape)
    return out, (hi - lo) <= eps


def postprocess(signed: Tensor, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """ReLU -> min-max at feature resolution -> (bi/tri)linear up-sampling -> min-max.

    The last min-max makes every non-constant map span exactly [0, 1]; it equals pytorch-grad-cam's
    output (which normalises, resizes, and normalises again when it aggregates layers).
    Returns the maps and uint8 flags.
    """
    finite = torch.isfinite(signed).flatten(1).all(dim=1)
    signed = torch.nan_to_num(signed, nan=0.0, posinf=0.0, neginf=0.0)
    maps, constant = _minmax(signed.clamp_min(0))
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.ndim - 1]
    maps = F.interpolate(maps.unsqueeze(1), size=tuple(size), mode=mode, align_corners=False).squeeze(1)
    maps, _ = _minmax(maps)
    flags = constant.to(torch.uint8) * FLAG_CONSTANT + (~finite).to(torch.uint8) * FLAG_NONFINITE
    return maps.clamp_(0, 1), flags


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def normalise_method_spec(methods: str | Sequence[str] | Mapping[str, Mapping | None]) -> dict[str, dict]:
    if isinstance(methods, str):
        methods = [methods]
    spec = {m: {} for m in methods} if not isinstance(methods, Mapping) else \
        {m: dict(p or {}) for m, p in methods.items()}
    if not spec:
        raise CamError("no CAM method given")
    for name, params in spec.items():
        METHODS.get(name).check_params(params)
    return spec


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim not in (4, 5):
        raise CamError("images must be a tensor (N, C, H, W) or (N, C, D, H, W), "
                       f"got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise CamError(f"images must be floating point, got {images.dtype}")


def explain_many(model: nn.Module, images: Tensor, methods, target_layer: nn.Module | str,
                 targets: Targets = None, batch_size: int | None = None) -> CamResult:
    """Heatmaps of several methods from one forward/backward per batch."""
    _check_images(images)
    spec = normalise_method_spec(methods)
    layer = resolve_layer(model, target_layer)
    need_grad = any(METHODS.get(m).meta.get("needs_gradients", True) for m in spec)
    n = images.shape[0]
    if targets is not None and not callable(targets):
        targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
        if targets.numel() != n:
            raise CamError(f"got {targets.numel()} targets for {n} images; give one target per image")
    step = batch_size or n
    parts: list[CamResult] = []
    with eval_mode(model):
        for start in range(0, n, step):
            batch = images[start:start + step]
            tb = targets[start:start + step] if isinstance(targets, Tensor) else targets
            inputs = capture(model, batch, layer, tb, need_grad)
            maps, raw, flags = {}, {}, {}
            for name, params in spec.items():
                out = METHODS.get(name).fn(inputs, **params)
                if out.ndim == 2:  # channel weights -> weighted sum of activation maps
                    shape = out.shape + (1,) * len(inputs.spatial_dims)
                    out = (out.view(shape) * inputs.activations).sum(dim=1)
                raw[name] = out
                maps[name], flags[name] = postprocess(out, batch.shape[2:])
            idx = inputs.targets if inputs.targets is not None else \
                torch.full((batch.shape[0],), -1, device=batch.device, dtype=torch.long)
            parts.append(CamResult(maps, raw, flags, inputs.logits, idx, inputs.scores))
    cat = lambda key: {m: torch.cat([getattr(p, key)[m] for p in parts]) for m in spec}  # noqa: E731
    return CamResult(cat("maps"), cat("raw"), cat("flags"),
                     torch.cat([p.logits for p in parts]), torch.cat([p.targets for p in parts]),
                     torch.cat([p.scores for p in parts]), params=spec)


def explain(model: nn.Module, images: Tensor, method: str, target_layer: nn.Module | str,
            targets: Targets = None, batch_size: int | None = None, **params) -> Tensor:
    """Heatmaps ``(N, *spatial)`` in [0, 1] on the images' device for one registered method."""
    return explain_many(model, images, {method: params}, target_layer, targets, batch_size).maps[method]


def methods() -> list[str]:
    """Names of the registered CAM methods."""
    return METHODS.names()
