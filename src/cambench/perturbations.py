"""Input perturbations, deterministic per (seed, kind, level, image key).

Noise comes from a counter-based generator: every element's random number is a hash of
(image key, stream, element index), computed with integer tensor ops on the images' device. The
result does not depend on batch composition, batch order or device (CPU and CUDA give the same
numbers), and nothing loops over images in Python.

Images are in pixel space, [0, 1], shape (N, C, H, W) or (N, C, D, H, W) (D, the first spatial
axis, is the axial one); the model's own first layer normalises them. Every perturbation keeps the
shape and dtype, returns values in [0, 1], and is the exact identity at level 0. ``max_level`` (in
each entry's meta, read by ``config.LEVEL_LIMITS``) is the largest meaningful level.

Severity conventions (docs/metrics.md §13.1, docs/papers.md §8; the parametrisations are [our-reading]: the
paper's noise definitions and grids are not known). Larger level = stronger perturbation.

=================  =====================================================================  =========
kind               level                                                                  max_level
=================  =====================================================================  =========
gaussian           σ of additive N(0, σ²) noise on [0, 1] pixels; clipped                 1
shot (Poisson)     y = level² · Poisson(x / level²): photon scale s = 1/level² counts at   1
                   white, so the noise std at intensity x is level·√x (= level at white).
                   the scale grid {60, 25, 12, 5, 3} is level = 1/√s ≈ {0.129,
                   0.2, 0.289, 0.447, 0.577}; level 1 = one expected photon at white
salt_and_pepper    fraction of elements replaced, half by 0 and half by 1, decided per       1
                   element (every channel of every pixel on its own, as skimage's
                   ``random_noise(mode="s&p", salt_vs_pepper=0.5)``)
speckle            σ of n in y = x + x·n, n ~ N(0, σ²) (skimage's ``mode="speckle"`` with     1
                   var = σ²); clipped
gaussian_blur      σ in pixels (voxels in 3D, the same σ on every spatial axis; voxel         32
                   spacing is not used): separable Gaussian, kernel truncated at 4σ and
                   normalised, scipy.ndimage's default "reflect" boundary (d c b a | a b c d
                   | d c b a, the edge sample repeated), as ``scipy.ndimage.gaussian_filter``
jpeg               JPEG quality q = 100 − level, rounded half up to an integer (level 99 =    99
                   quality 1, level 0.5 = quality 100). Pixels are rounded to uint8 first; 3
                   channels are coded as colour (libjpeg's YCbCr with 4:2:0 chroma
                   subsampling), 1 channel as greyscale, any other channel count channel by
                   channel as greyscale; volumes slice by slice along D. Level 0 is the
                   identity, so any level > 0 (even one rounding to quality 100) includes the
                   uint8 rounding
brightness         y = clip(x + level): every element shifted up by level (ImageNet-C        1
                   shifts the HSV value channel instead; this shift is channel-agnostic, for
                   1-, 3- and 4-channel images and volumes alike); level 1 = white
contrast           y = x + level·(m − x) = (x − m)(1 − level) + m, m the mean of each image   1
                   and channel over its spatial axes; level 1 = the flat mean image
fgsm               ε = level/255 (level 8 = 8/255): x + ε·sign(∇x CE(model(x), label)),        255
                   clipped; one step (the grid {1, 2, 4, 8} of docs/metrics.md §13.1)
pgd                ε = level/255: L∞ PGD, ``steps`` (10) steps of ``step_ratio``·ε (0.25),    255
                   keyed random start in [−ε, ε] (``random_start``), project, then clamp
part_pgd           ε = level/255: PART's PGD (docs/metrics.md §13.2) with budget ε on the elements a  255
                   CAM of the predicted class marks and ε_low = ``eps_low_ratio``·ε (7/8)
                   elsewhere; ``mask_mode`` repo (jet, 3-channel 2D) / intent [our-reading]
=================  =====================================================================  =========

The adversarial kinds (``cambench.adversarial``) attack the ground-truth labels, so ``perturb``
needs ``model`` and ``labels`` for them (``part_pgd`` also ``target_layer``; see
:func:`perturbation_needs`) and takes their parameters in ``params`` (:func:`perturbation_params`
lists the defaults). The noise kinds take no parameters.

Brightness, contrast, blur and JPEG are deterministic transforms and use no random numbers. JPEG is
encoded and decoded on the CPU (torchvision's libjpeg, not nvjpeg), so CUDA images give the CPU's
bytes; blur and contrast are float arithmetic, equal across devices up to rounding.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .adversarial import ATTACKS, AttackInputs
from .counter_rng import (
    counter_normal,
    counter_poisson,
    perturbation_keys,
    uniform,
)
from .registry import Registry

PERTURBATIONS = Registry("perturbation")
register_perturbation = PERTURBATIONS.register

def _identity(images: Tensor) -> Tensor:
    return images.clone()


@register_perturbation("none", summary="the clean image")
def none(images: Tensor, keys: Tensor, level: float) -> Tensor:
    return images


@register_perturbation("gaussian", summary="additive Gaussian noise, std = level on [0, 1] pixels, clipped",
                       max_level=1.0)
def gaussian(images: Tensor, keys: Tensor, level: float) -> Tensor:
    noise = counter_normal(keys, tuple(images.shape[1:])).to(images.device, images.dtype)
    return (images + level * noise).clamp_(0.0, 1.0)


@register_perturbation("shot", summary="Poisson (shot) noise: level² · Poisson(x / level²), "
                       "std level·√x; photon scale 1/level² at white", max_level=1.0)
def shot(images: Tensor, keys: Tensor, level: float) -> Tensor:
    if level == 0:
        return _identity(images)
    scale = 1.0 / (level * level)
    if not math.isfinite(scale):
        raise ValueError(f"shot noise level {level} is too small (photon scale 1/level² overflows)")
    counts = counter_poisson(keys, images.to(torch.float64) * scale)
    return (counts / scale).to(images.dtype).clamp_(0.0, 1.0)


@register_perturbation("salt_and_pepper", summary="fraction level of elements (per pixel and channel) "
                       "set to 0 or 1, half each", max_level=1.0)
def salt_and_pepper(images: Tensor, keys: Tensor, level: float) -> Tensor:
    if level == 0:
        return _identity(images)
    # one uniform per element: u < level/2 is pepper, u >= 1 - level/2 is salt (disjoint for level <= 1)
    u = uniform(keys, tuple(images.shape[1:]), 1).to(images.device)
    out = torch.where(u < level / 2, 0.0, images)
    return torch.where(u >= 1 - level / 2, 1.0, out).to(images.dtype)


@register_perturbation("speckle", summary="multiplicative noise x + x·n, n ~ N(0, level²), clipped",
                       max_level=1.0)
def speckle(images: Tensor, keys: Tensor, level: float) -> Tensor:
    noise = counter_normal(keys, tuple(images.shape[1:])).to(images.device, images.dtype)
    return (images + images * (level * noise)).clamp_(0.0, 1.0)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> Tensor:
    """scipy.ndimage's 1D Gaussian: radius int(truncate·σ + 0.5), taps exp(−x²/2σ²) normalised (float64)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _reflect_index(n: int, radius: int, device) -> Tensor:
    """Source indices of an axis of length n padded by radius on each side, scipy's "reflect"
    (d c b a | a b c d | d c b a): period 2n, so radii beyond n reflect again, as in scipy.

    torch's own ``F.pad(mode="reflect")`` is scipy's "mirror" (c b | a b c d, edge not repeated) and
    refuses pads wider than the axis, hence the gather."""
    i = torch.remainder(torch.arange(-radius, n + radius, device=device), 2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


@register_perturbation("gaussian_blur", summary="Gaussian blur, σ = level pixels (voxels), truncated at 4σ, "
                       "reflect boundary as scipy.ndimage.gaussian_filter", max_level=32.0)
def gaussian_blur(images: Tensor, keys: Tensor, level: float) -> Tensor:
    if level == 0:
        return _identity(images)
    weights = gaussian_kernel1d(level).to(images.device, images.dtype)
    radius = (weights.numel() - 1) // 2
    if radius == 0:  # σ < 0.125: a single tap, as in scipy
        return _identity(images)
    out = images
    for axis in range(2, images.ndim):
        n = out.shape[axis]
        padded = out.index_select(axis, _reflect_index(n, radius, images.device)).movedim(axis, -1)
        lead = padded.shape[:-1]
        conv = torch.nn.functional.conv1d(padded.reshape(-1, 1, padded.shape[-1]), weights.view(1, 1, -1))
        out = conv.reshape(*lead, n).movedim(-1, axis)
    return out.clamp(0.0, 1.0).contiguous()


def jpeg_quality(level: float) -> int:
    """The JPEG quality of a level: 100 − level rounded half up, within libjpeg's 1..100."""
    return min(100, max(1, math.floor(100 - level + 0.5)))


@register_perturbation("jpeg", summary="JPEG compression at quality 100 − level (rounded); 3 channels as "
                       "colour, others per channel as greyscale; volumes per axial slice", max_level=99.0)
def jpeg(images: Tensor, keys: Tensor, level: float) -> Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    if level == 0 or images.shape[0] == 0:
        return _identity(images)
    n, c = images.shape[:2]
    h, w = images.shape[-2:]
    # (N, C, [D,] H, W) -> planes (N·[D], C, H, W); channel counts other than 1 and 3 -> greyscale planes
    planes = images.movedim(1, -3)
    lead = planes.shape[:-3]
    planes = planes.reshape(-1, c, h, w) if c in (1, 3) else planes.reshape(-1, 1, h, w)
    u8 = (planes.detach().to("cpu", torch.float32) * 255).round_().clamp_(0, 255).to(torch.uint8)
    coded = encode_jpeg(list(u8.unbind(0)), quality=jpeg_quality(level))
    decoded = torch.stack(decode_jpeg(coded, mode=ImageReadMode.UNCHANGED))
    out = (decoded.to(torch.float32) / 255).reshape(*lead, c, h, w).movedim(-3, 1)
    return out.to(images.device, images.dtype).contiguous()


@register_perturbation("brightness", summary="brightness shift x + level on every element, clipped "
                       "(level 1 = white)", max_level=1.0)
def brightness(images: Tensor, keys: Tensor, level: float) -> Tensor:
    return (images + level).clamp_(0.0, 1.0)


@register_perturbation("contrast", summary="contrast reduction (x − m)(1 − level) + m, m the per-image, "
                       "per-channel spatial mean (level 1 = flat)", max_level=1.0)
def contrast(images: Tensor, keys: Tensor, level: float) -> Tensor:
    if level == 0:
        return _identity(images)
    mean = images.mean(dim=tuple(range(2, images.ndim)), keepdim=True)
    return torch.lerp(images, mean.expand_as(images), level).clamp_(0.0, 1.0)


def perturb(images: Tensor, kind: str, level: float, seed: int = 0, keys: Tensor | None = None, *,
            model: torch.nn.Module | None = None, labels: Tensor | None = None, target_layer=None,
            params: dict | None = None) -> Tensor:
    """Perturbed copy of ``images`` (pixel space, [0, 1]).

    ``keys`` are stable per-image integers (e.g. hashes of image ids); with them the result for an
    image is independent of the batch it is in. Without them the position in the batch is the key.
    ``level`` must lie in [0, max_level] of the kind (level 0 returns the images unchanged).
    ``model``, ``labels`` (N,) and ``target_layer`` are used by the kinds that need them
    (:func:`perturbation_needs`) and ignored by the others; ``params`` are the kind's parameters
    (:func:`perturbation_params`), checked by name and type.
    """
    entry = PERTURBATIONS.get(kind)
    if level < 0 or not math.isfinite(level):
        raise ValueError(f"perturbation level must be a finite number >= 0, got {level}")
    max_level = entry.meta.get("max_level", math.inf)
    if level > max_level:
        raise ValueError(f"perturbation '{kind}': level {level} is above its max_level {max_level}")
    if keys is None:
        keys = torch.arange(images.shape[0], device=images.device)
    keys = torch.as_tensor(keys, device=images.device)
    if keys.shape != (images.shape[0],):
        raise ValueError(f"got {tuple(keys.shape)} keys for {images.shape[0]} images")
    params = dict(params or {})
    needs = perturbation_needs(kind)
    generator_keys = perturbation_keys(keys, kind, level, seed)
    if not needs:
        if params:
            raise ValueError(f"perturbation '{kind}' takes no parameters, got {sorted(params)}")
        return entry.fn(images, generator_keys, float(level))
    given = {"model": model, "labels": labels, "target_layer": target_layer}
    missing = [name for name in needs if given[name] is None]
    if missing:
        raise ValueError(f"perturbation '{kind}' needs {' and '.join(missing)}; pass "
                         f"{', '.join(f'{m}=...' for m in missing)} to perturb()")
    entry.check_params(params)
    inputs = AttackInputs(images, generator_keys, float(level), model, labels, target_layer, kind)
    return entry.fn(inputs, **params)


def perturbation_needs(kind: str) -> tuple[str, ...]:
    """What a kind needs besides the images: a subset of ('model', 'labels', 'target_layer')."""
    return tuple(PERTURBATIONS.get(kind).meta.get("needs", ()))


def perturbation_params(kind: str) -> dict:
    """A kind's parameters with their defaults ({} for the noise kinds)."""
    entry = PERTURBATIONS.get(kind)
    return dict(entry.parameters()) if perturbation_needs(kind) else {}


def perturbations() -> list[str]:
    """Names of the registered perturbations."""
    return PERTURBATIONS.names()


# The adversarial kinds, declared beside their code (cambench.adversarial imports nothing from this module)
for _name, (_attack, _meta) in ATTACKS.items():
    register_perturbation(_name, **_meta)(_attack)
