"""Adversarial perturbations: FGSM, L∞ PGD, and PART's CAM-reweighted PGD (docs/metrics.md §13.2).

All three are untargeted attacks on the ground-truth labels: they increase the cross-entropy of
``labels`` under the model. ``level`` is ε in units of 1/255 on [0, 1] pixels (level 8 = 8/255),
level 0 is the exact identity and level 255 allows any image. Gradients are taken with
``torch.autograd.grad`` with respect to the input only (never parameter gradients), with the model
in eval mode (each module's mode is restored afterwards) and the loss summed over the batch, so
each image's gradient is its own: results do not depend on how images are batched. Images are
processed in chunks sized by ``memory_mb``; each chunk runs all its steps as one batch.

Random starts use the counter-based generator of :mod:`cambench.counter_rng` (stream 4 of the
perturbation keys), so they are deterministic per (seed, kind, level, image key).

PART (Zhang et al., ICML 2024) gives every element its own budget ε_map ∈ {ε_low, ε}: full ε where
a CAM of the model's predicted class on the clean image marks the element important, ε_low
elsewhere. Two mask modes (``part.mask_mode``):

* ``repo`` (the official code's steps 3.1-3.5, 3-channel 2D images only): the CAM, ReLU'd and
  min-max normalised at feature resolution (torchcam's map), is resized bicubically to the image
  size, squared, coloured with matplotlib's 256-entry jet colormap, standardised with one mean and
  (population) std over all pixels and channels of the image, and elements with z > 1 get ε, per
  pixel *and* channel. The code resizes with PIL's bicubic filter (a = −0.5); torch's bicubic
  (a = −0.75, align_corners=False, edges replicated) is used here, so masks can differ from the
  repo's at elements whose z is close to 1.
* ``intent`` [our-reading]: one mask per pixel, m = 1[Norm(CAM)² ≥ τ] on the post-processed map at
  input resolution, broadcast over channels; for any channel count and for volumes.

The attack is the code's ``part_pgd``: start uniform in the *global* [−ε, ε], not clamped to
[0, 1] or to ε_map before the first gradient (as in the code); each step adds step·sign(∇) and
projects element-wise onto [−ε_map, ε_map], then clamps to [0, 1].
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .counter_rng import uniform
from .utils import eval_mode

MAX_LEVEL = 255.0  # ε = 1: every image in [0, 1] is within reach
RANDOM_START_STREAM = 4  # generator stream of the random starts (the noise kinds use 1-3)
# Peak memory of one image's forward + backward (activations kept for the input gradient), in
# multiples of the image's bytes; only sizes chunks (ResNet-50 at 224 px keeps ~160x its input).
BACKWARD_MEMORY_FACTOR = 160
TORCHCAM_NORM_EPS = 1e-8  # torchcam's min-max epsilon (docs/methods.md §1.1): PART's CAMs come from torchcam
MASK_MODES = ("auto", "intent", "repo")

# matplotlib's jet (matplotlib._cm._jet_data): per channel, (x, value) nodes of a piecewise-linear curve.
_JET_NODES = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
JET_N = 256  # matplotlib's default lookup-table size

# name -> (function, registration metadata): cambench.perturbations registers them beside the noise
# kinds, so that this module need not import that one (which builds AttackInputs for them).
ATTACKS: dict[str, tuple[Callable, dict]] = {}


def attack(name: str, **meta) -> Callable[[Callable], Callable]:
    """Declare an adversarial perturbation (the arguments of ``register_perturbation``)."""
    def deco(fn: Callable) -> Callable:
        ATTACKS[name] = (fn, meta)
        return fn
    return deco


@dataclass
class AttackInputs:
    """What an adversarial perturbation receives from :func:`cambench.perturb`."""

    images: Tensor                  # (N, C, *S) clean pixels in [0, 1]
    keys: Tensor                    # (N,) generator keys, already mixed with (seed, kind, level)
    level: float                    # ε in units of 1/255
    model: nn.Module
    labels: Tensor | None = None    # (N,) ground-truth classes: the attacked targets
    target_layer: nn.Module | str | None = None
    kind: str = ""

    @property
    def eps(self) -> float:
        return self.level / 255.0


def _check(kind: str, name: str, ok: bool, what: str, value) -> None:
    if not ok:
        raise ValueError(f"perturbation '{kind}': parameter '{name}' must be {what}, got {value!r}")


def _check_steps(kind: str, steps, step_ratio, memory_mb) -> None:
    _check(kind, "steps", isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
           "an integer >= 1", steps)
    _check(kind, "step_ratio", math.isfinite(step_ratio) and step_ratio > 0, "a finite number > 0", step_ratio)
    _check(kind, "memory_mb", math.isfinite(memory_mb) and memory_mb > 0, "a finite number > 0", memory_mb)


def _labels(x: AttackInputs) -> Tensor:
    labels = torch.as_tensor(x.labels, device=x.images.device).long().reshape(-1)
    if labels.shape != (x.images.shape[0],):
        raise ValueError(f"perturbation '{x.kind}': got {labels.numel()} labels for {x.images.shape[0]} images")
    return labels


def _chunks(images: Tensor, memory_mb: float) -> list[slice]:
    from .metrics.base import chunk_size  # lazy: importing cambench.metrics registers every metric

    per_image = BACKWARD_MEMORY_FACTOR * images[:1].numel() * images.element_size()
    step = chunk_size(per_image, memory_mb)
    return [slice(i, i + step) for i in range(0, images.shape[0], step)]


def loss_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """d CE(model(images), labels) / d images, per image (the loss is summed, not averaged)."""
    with torch.enable_grad():
        leaf = images.detach().requires_grad_(True)
        loss = F.cross_entropy(model(leaf), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def random_start(keys: Tensor, images: Tensor, eps: float) -> Tensor:
    """δ uniform in [−ε, ε] per element, keyed per image (independent of batching and device)."""
    u = uniform(keys, tuple(images.shape[1:]), RANDOM_START_STREAM).to(images.device, images.dtype)
    return (u * 2 - 1) * eps


def projected_ascent(model: nn.Module, images: Tensor, labels: Tensor, start: Tensor, budget: float | Tensor,
                     step: float, steps: int) -> Tensor:
    """``steps`` sign-gradient ascent steps from ``start``, each followed by the projection
    x + clip(x_adv − x, −budget, budget) (``budget`` a number or an element-wise tensor) and a clamp
    to [0, 1]."""
    lo = -budget
    adv = start
    for _ in range(steps):
        adv = adv + step * loss_gradient(model, adv, labels).sign()
        adv = (images + torch.clamp(adv - images, lo, budget)).clamp(0.0, 1.0)
    return adv


@attack("fgsm", bounds={"memory_mb": "(0, inf)"},
        needs=("model", "labels"), max_level=MAX_LEVEL,
        summary="FGSM: x + ε·sign(∇x CE(model(x), label)), ε = level/255, clipped")
def fgsm(x: AttackInputs, *, memory_mb: float = 1024.0) -> Tensor:
    """One signed-gradient step of size ε on the cross-entropy of the true labels, clipped to [0, 1].

    ``memory_mb`` bounds the images per forward/backward; it does not change the result.
    """
    _check(x.kind, "memory_mb", math.isfinite(memory_mb) and memory_mb > 0, "a finite number > 0", memory_mb)
    return _per_chunk(x, memory_mb, lambda images, labels, _keys:
                      (images + x.eps * loss_gradient(x.model, images, labels).sign()).clamp(0.0, 1.0))


def _per_chunk(x: AttackInputs, memory_mb: float, attack) -> Tensor:
    """``attack(images, labels, keys)`` on chunks of the batch sized by ``memory_mb``, the model in
    eval mode; level 0 is the identity."""
    labels = _labels(x)
    if x.eps == 0:
        return x.images.clone()
    out = torch.empty_like(x.images)
    with eval_mode(x.model):
        for part in _chunks(x.images, memory_mb):
            out[part] = attack(x.images[part], labels[part], x.keys[part])
    return out


@attack("pgd", bounds={"steps": "int [1, inf)", "step_ratio": "(0, inf)", "memory_mb": "(0, inf)"},
        needs=("model", "labels"), max_level=MAX_LEVEL,
        summary="L∞ PGD on the true labels' cross-entropy, ε = level/255, step = step_ratio·ε, "
                "keyed random start")
def pgd(x: AttackInputs, *, steps: int = 10, step_ratio: float = 0.25, random_start: bool = True,
        memory_mb: float = 1024.0) -> Tensor:
    """L∞ PGD (Madry et al.): ``steps`` sign-gradient steps of ``step_ratio``·ε (PART's 2/255 at
    ε = 8/255 is the default 0.25), each projected onto the ε-ball around x and clamped to [0, 1].

    With ``random_start`` the attack starts at clamp(x + δ, 0, 1), δ uniform in [−ε, ε] from the
    keyed generator (as captum's and torchattacks' PGD, which draw δ from torch's global generator).
    """
    _check_steps(x.kind, steps, step_ratio, memory_mb)
    eps = x.eps

    def attack(images, labels, keys):
        start = (images + _random_start(keys, images, eps)).clamp(0.0, 1.0) if random_start else images
        return projected_ascent(x.model, images, labels, start, eps, step_ratio * eps, steps)
    return _per_chunk(x, memory_mb, attack)


_random_start = random_start  # pgd's parameter of the same name shadows the function there


# --------------------------------------------------------------------------------------------
# PART
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _jet_table() -> Tensor:
    x = torch.linspace(0, 1, JET_N, dtype=torch.float64)
    columns = []
    for channel in ("red", "green", "blue"):
        nodes = torch.tensor(_JET_NODES[channel], dtype=torch.float64)
        xs, ys = nodes[:, 0].contiguous(), nodes[:, 1].contiguous()
        right = torch.searchsorted(xs, x, right=True).clamp(1, len(xs) - 1)
        t = (x - xs[right - 1]) / (xs[right] - xs[right - 1])
        columns.append(t * (ys[right] - ys[right - 1]) + ys[right - 1])
    return torch.stack(columns, dim=1).clamp(0, 1)


def jet_lut(device=None) -> Tensor:
    """matplotlib's jet lookup table (256, 3) in float64: entry i is the curve at i / 255."""
    return _jet_table().to(device)


def jet(values: Tensor) -> Tensor:
    """RGB (…, 3) in float64 of matplotlib's ``cm.jet(values)[..., :3]`` for finite values: the
    table entry floor(v·256), with v = 1 and anything above in the last entry, below 0 in the first."""
    index = torch.floor(values * JET_N).clamp(0, JET_N - 1).long()
    return jet_lut(values.device)[index]


def repo_zscores(cam: Tensor, size) -> Tensor:
    """PART's standardised jet overlay (N, 3, H, W), float64 (the code's weight matrix before its clamp).

    ``cam`` (N, h, w) is the CAM min-max normalised to [0, 1] at feature resolution. Bicubic resize
    (torch's; PIL's differs, see the module docstring), square, jet, z-score with one mean and
    population std over the image's pixels and channels.
    """
    up = F.interpolate(cam[:, None].float(), size=tuple(size), mode="bicubic", align_corners=False)[:, 0]
    rgb = jet(up * up).movedim(-1, 1)
    flat = rgb.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, correction=0).view(-1, 1, 1, 1)  # > 0: jet's channels are never all equal
    return (rgb - mean) / std


def repo_full_budget(cam: Tensor, size) -> Tensor:
    """PART's repo mask (N, 3, H, W) bool, True where the element gets the full ε: z > 1 of
    :func:`repo_zscores`. (The code clamps z to [1, max z] and tests W > 1: the same elements.)"""
    return repo_zscores(cam, size) > 1


def intent_full_budget(maps: Tensor, tau: float) -> Tensor:
    """[our-reading] mask (N, 1, *S) bool: Norm(CAM)² ≥ τ per pixel, ``maps`` (N, *S) in [0, 1]."""
    return (maps * maps >= tau)[:, None]


def _resolve_mask_mode(mask_mode: str, images: Tensor) -> str:
    rgb_2d = images.ndim == 4 and images.shape[1] == 3
    if mask_mode == "auto":
        return "repo" if rgb_2d else "intent"
    if mask_mode == "repo" and not rgb_2d:
        raise ValueError(f"perturbation 'part_pgd': parameter 'mask_mode' 'repo' (jet colouring) needs "
                         f"3-channel 2D images, got shape {tuple(images.shape)}; use 'intent'")
    return mask_mode


def part_eps_map(model: nn.Module, images: Tensor, target_layer, eps: float, eps_low: float,
                 method: str = "gradcam", mask_mode: str = "auto", tau: float = 0.5,
                 memory_mb: float = 1024.0) -> Tensor:
    """PART's element-wise budget (N, C, *S): ``eps`` where the CAM of the predicted class on the
    clean ``images`` marks the element, ``eps_low`` elsewhere (docs/metrics.md §13.2)."""
    from .engine import explain_many  # lazy: the engine imports the method registry

    mode = _resolve_mask_mode(mask_mode, images)
    result = explain_many(model, images, {method: {}}, target_layer, memory_mb=memory_mb)
    if mode == "repo":
        raw = result.raw[method].clamp_min(0)  # torchcam: ReLU, then min-max at feature resolution
        flat = raw.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1)
        full = repo_full_budget((raw - lo) / (hi - lo + TORCHCAM_NORM_EPS), images.shape[2:])
    else:
        full = intent_full_budget(result.maps[method], tau)
    eps_map = torch.where(full, eps, eps_low).to(images.dtype)
    return eps_map.expand_as(images).contiguous()


@attack("part_pgd", bounds={"steps": "int [1, inf)", "step_ratio": "(0, inf)", "memory_mb": "(0, inf)",
                            "mask_mode": MASK_MODES, "tau": "[0, 1]", "eps_low_ratio": "[0, 1]"},
        needs=("model", "labels", "target_layer"), max_level=MAX_LEVEL,
        summary="PART's CAM-reweighted PGD: budget ε (level/255) on CAM-marked elements, "
                "eps_low_ratio·ε elsewhere")
def part_pgd(x: AttackInputs, *, method: str = "gradcam", mask_mode: str = "auto", tau: float = 0.5,
             eps_low_ratio: float = 7 / 8, steps: int = 10, step_ratio: float = 0.25, random_start: bool = True,
             memory_mb: float = 1024.0) -> Tensor:
    """PART's PGD with the per-element budget of :func:`part_eps_map` (docs/metrics.md §13.2).

    ``method``: the registered CAM method (torchcam's Grad-CAM in PART); class = the model's
    prediction on the clean image. ``mask_mode``: 'repo', 'intent' [our-reading] or 'auto' (repo for
    3-channel 2D images, intent otherwise). ``tau``: the intent threshold [our-reading, default 0.5].
    ``eps_low_ratio``: ε_low / ε (7/8: PART's 7/255 at 8/255). ``steps``, ``step_ratio`` as
    :func:`pgd` (10 steps of 2/255 at 8/255); the random start is uniform in the global [−ε, ε] and
    not clamped (see the module docstring).
    """
    from .engine import METHODS

    _check_steps(x.kind, steps, step_ratio, memory_mb)
    _check(x.kind, "method", method in METHODS, f"a registered CAM method ({', '.join(METHODS.names())})", method)
    _check(x.kind, "mask_mode", mask_mode in MASK_MODES, f"one of {', '.join(MASK_MODES)}", mask_mode)
    _check(x.kind, "tau", 0 <= tau <= 1, "a number in [0, 1]", tau)
    _check(x.kind, "eps_low_ratio", 0 <= eps_low_ratio <= 1, "a number in [0, 1]", eps_low_ratio)
    _resolve_mask_mode(mask_mode, x.images)
    eps = x.eps

    def attack(images, labels, keys):
        budget = part_eps_map(x.model, images, x.target_layer, eps, eps_low_ratio * eps, method, mask_mode,
                              tau, memory_mb)
        start = images + _random_start(keys, images, eps) if random_start else images
        return projected_ascent(x.model, images, labels, start, budget, step_ratio * eps, steps)
    return _per_chunk(x, memory_mb, attack)
