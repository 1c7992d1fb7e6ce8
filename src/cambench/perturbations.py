"""Input perturbations, deterministic per (seed, kind, level, image key).

Noise comes from a counter-based generator: every element's random number is a hash of
(image key, stream, element index), computed with integer tensor ops on the images' device. The
result does not depend on batch composition, batch order or device (CPU and CUDA give the same
numbers), and nothing loops over images in Python.

Images are in pixel space, [0, 1]; the model's own first layer normalises them.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from .registry import Registry

PERTURBATIONS = Registry("perturbation")
register_perturbation = PERTURBATIONS.register

_M32 = 0xFFFFFFFF


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer on int64 tensors holding values < 2**32.

    The multiplier is < 2**27, so products stay below 2**59: no signed overflow anywhere.
    """
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def string_key(text: str) -> int:
    """A stable 32-bit key for a string (an image id, a perturbation kind, a level)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _uniform(keys: Tensor, shape: tuple[int, ...], stream: int) -> Tensor:
    """Uniform (0, 1) numbers of shape (N, *shape): 24 random bits per element."""
    n_el = math.prod(shape)
    idx = torch.arange(n_el, device=keys.device, dtype=torch.int64)
    k = _hash32((keys.to(torch.int64) & _M32) ^ (stream * 0x9E3779B1 & _M32))
    h = _hash32((_hash32(k[:, None] ^ idx[None, :]) + k[:, None]) & _M32)
    h = _hash32(h ^ ((idx[None, :] * 0x2545F49) & _M32))
    u = ((h >> 8).to(torch.float64) + 0.5) / float(1 << 24)
    return u.view((keys.shape[0],) + tuple(shape))


def counter_normal(keys: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Standard normal numbers of shape (N, *shape) keyed per image (Box-Muller on two streams)."""
    u1 = _uniform(keys, shape, 1)
    u2 = _uniform(keys, shape, 2)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(torch.float32)


def perturbation_keys(image_keys: Tensor, kind: str, level: float, seed: int) -> Tensor:
    """Combine per-image keys with (seed, kind, level) into the keys the generator uses."""
    salt = string_key(f"{seed}|{kind}|{float(level)!r}")
    return _hash32((image_keys.to(torch.int64) & _M32) ^ salt)


@register_perturbation("none", summary="the clean image")
def none(images: Tensor, keys: Tensor, level: float) -> Tensor:
    return images


@register_perturbation("gaussian", summary="additive Gaussian noise, std = level on [0, 1] pixels, clipped")
def gaussian(images: Tensor, keys: Tensor, level: float) -> Tensor:
    noise = counter_normal(keys, tuple(images.shape[1:])).to(images.device, images.dtype)
    return (images + level * noise).clamp_(0.0, 1.0)


def perturb(images: Tensor, kind: str, level: float, seed: int = 0, keys: Tensor | None = None) -> Tensor:
    """Perturbed copy of ``images`` (pixel space, [0, 1]).

    ``keys`` are stable per-image integers (e.g. hashes of image ids); with them the result for an
    image is independent of the batch it is in. Without them the position in the batch is the key.
    """
    entry = PERTURBATIONS.get(kind)
    if level < 0 or not math.isfinite(level):
        raise ValueError(f"perturbation level must be a finite number >= 0, got {level}")
    if keys is None:
        keys = torch.arange(images.shape[0], device=images.device)
    keys = torch.as_tensor(keys, device=images.device)
    if keys.shape != (images.shape[0],):
        raise ValueError(f"got {tuple(keys.shape)} keys for {images.shape[0]} images")
    return entry.fn(images, perturbation_keys(keys, kind, level, seed), float(level))


def perturbations() -> list[str]:
    """Names of the registered perturbations."""
    return PERTURBATIONS.names()
