"""Counter-based random numbers: every element's number is a hash of (image key, stream, element index).

Computed with integer tensor ops on the keys' device, so the numbers do not depend on batch
composition, batch order or device (CPU and CUDA give the same), and nothing loops over images in
Python. Streams: 1-3 the noise perturbations (cambench.perturbations), 4 the adversarial random
starts (cambench.adversarial), 7 max-sensitivity's draws (cambench.metrics.robustness).

A leaf module: it imports nothing from cambench, so perturbations, attacks and metrics share it
without importing one another.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

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


def uniform(keys: Tensor, shape: tuple[int, ...], stream: int) -> Tensor:
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
    u1 = uniform(keys, shape, 1)
    u2 = uniform(keys, shape, 2)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).to(torch.float32)


def perturbation_keys(image_keys: Tensor, kind: str, level: float, seed: int) -> Tensor:
    """Combine per-image keys with (seed, kind, level) into the keys the generator uses."""
    salt = string_key(f"{seed}|{kind}|{float(level)!r}")
    return _hash32((image_keys.to(torch.int64) & _M32) ^ salt)


# Rates above this are sampled by the Cornish-Fisher approximation instead of exact inversion: the
# inversion's CDF steps rely on torch.special.gammaincc (float64), which agrees with scipy up to 1e8
# but stops resolving single counts near 1e9; at 1e6 the approximation's error is far below the
# noise (skewness 1e-3; tested within one count of the exact quantile). Only shot levels below 1e-3
# reach it.
_POISSON_EXACT_MAX = 1e6


def counter_poisson(keys: Tensor, rates: Tensor) -> Tensor:
    """Poisson(rates) counts (float64, shape of ``rates`` = (N, *S)), keyed per image.

    Inversion of the exact CDF with one uniform per element: the count is the smallest k with
    P(X <= k) = gammaincc(k + 1, rate) >= u. The search starts from the Cornish-Fisher quantile with
    continuity correction, ceil(λ + √λ z + (z² − 1)/6 − 1/2) with z = Φ⁻¹(u), which is within a few
    counts, and steps up or down (every step moves toward the answer, so it ends; in practice in 1
    to 5 vectorised rounds). Rates above ``_POISSON_EXACT_MAX`` keep the approximation.
    """
    rates = rates.to(torch.float64)
    u = uniform(keys, tuple(rates.shape[1:]), 3).to(rates.device)
    z = torch.special.ndtri(u)
    k = torch.ceil(rates + rates.sqrt() * z + (z * z - 1) / 6 - 0.5).clamp_(min=0)
    exact = rates <= _POISSON_EXACT_MAX
    k = torch.where(rates == 0, 0.0, k)
    lam = torch.where(exact, rates, 0.0)  # no CDF evaluations at the approximated rates
    for _ in range(1000):  # a safety bound only: the search ends after a few rounds
        up = exact & (torch.special.gammaincc(k + 1, lam) < u)
        down = exact & (k > 0) & (torch.special.gammaincc(k, lam) >= u)
        if not bool((up | down).any()):
            return k
        k = k + up.to(k.dtype) - down.to(k.dtype)
    raise RuntimeError("Poisson inversion did not converge")
