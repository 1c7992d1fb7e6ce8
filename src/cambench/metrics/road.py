"""ROAD, Remove And Debias (Rong et al., ICML 2022; methods.md §3.1).

Pixels ranked by the heatmap are removed and filled by **noisy linear imputation**: every removed
pixel equals the weighted mean of its in-image neighbours (weights 1/6 edge, 1/12 diagonal), known
neighbours act as boundary values, and i.i.d. Gaussian noise (σ = ``noise``) is added to the
imputed values. The reference code (``tleemann/road_evaluation``, copied into pytorch-grad-cam)
assembles one sparse system per image and calls ``scipy.sparse.linalg.spsolve`` on the CPU. Here
the same system is solved for all (image, order, percentile, channel) at once on the device by
Jacobi-preconditioned conjugate gradients: the system matrix ``D - W`` restricted to the removed
pixels is symmetric positive definite whenever the image keeps at least one pixel, and applying it
is one 3×3 (3D: 3×3×3 or 1×3×3) convolution.

The per-image scores follow pytorch-grad-cam's ``ROADMostRelevantFirstAverage``,
``ROADLeastRelevantFirstAverage`` and ``ROADCombined``: for percentile q, MoRF removes the pixels
whose map value is >= the q-th percentile of the map, LeRF those whose ``1 - map`` is >= the q-th
percentile of ``1 - map`` (numpy's linear interpolation); the value is the mean over q of
``s(imputed) - s(original)``, and combined is ``(LeRF - MoRF) / 2`` (the original score cancels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import MetricInputs, chunk_size, model_scores, register_metric

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
EDGE_WEIGHT, DIAGONAL_WEIGHT = 1 / 6, 1 / 12   # reference imputer's neighbour weights (2D)
VOLUME_MODES = ("slicewise", "3d")
ORDERS = ("morf", "lerf")
# Working memory of one (image, order, percentile) row in multiples of the image's bytes: the CG
# vectors (about 8) plus the model forward on the imputed image.
ROAD_MEMORY_FACTOR = 24


# --------------------------------------------------------------------------------------------
# Noisy linear imputation
# --------------------------------------------------------------------------------------------

def neighbour_kernel(spatial: int, volume_mode: str = "slicewise", dtype=torch.float32, device=None) -> Tensor:
    """Convolution kernel (1, 1, *k) holding the neighbour weights; the centre is 0.

    2D: the reference weights. 3D ``slicewise``: the 2D weights within each axial slice (the first
    spatial axis is the axial one), so each slice is imputed on its own. 3D ``3d`` [our reading]:
    the 26-neighbourhood with weights proportional to 1 / squared distance (the rule that gives
    the reference's 2 : 1 edge-to-diagonal ratio in 2D), normalised to sum to 1: 3/44 for the 6
    face, 3/88 for the 12 edge and 1/44 for the 8 corner neighbours.
    """
    if spatial == 2 or (spatial == 3 and volume_mode == "slicewise"):
        k = torch.full((3, 3), DIAGONAL_WEIGHT, dtype=torch.float64)
        k[1, :] = k[:, 1] = EDGE_WEIGHT
        k[1, 1] = 0
        if spatial == 3:
            k = k.unsqueeze(0)
    elif spatial == 3 and volume_mode == "3d":
        grid = torch.stack(torch.meshgrid(*[torch.arange(-1, 2, dtype=torch.float64)] * 3, indexing="ij"))
        d2 = (grid ** 2).sum(dim=0)
        k = torch.where(d2 > 0, 1 / d2.clamp_min(1), torch.zeros_like(d2))
        k = k / k.sum()
    else:
        raise ValueError(f"road: volume_mode must be one of {VOLUME_MODES} and images 2D or 3D, "
                         f"got {volume_mode!r} for {spatial} spatial dimensions")
    return k.to(dtype=dtype, device=device).view((1, 1) + tuple(k.shape))


def _conv(v: Tensor, kernel: Tensor) -> Tensor:
    pad = tuple(s // 2 for s in kernel.shape[2:])
    if v.ndim == 5 or v.device.type != "cpu":
        return F.conv3d(v, kernel, padding=pad) if v.ndim == 5 else F.conv2d(v, kernel, padding=pad)
    # oneDNN is several times slower than the native kernel for one-channel 2D convolutions on CPU
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        return F.conv2d(v, kernel, padding=pad)
    finally:
        torch.backends.mkldnn.enabled = enabled


def _known_means(known: Tensor, keep: Tensor, slicewise: bool) -> tuple[Tensor, Tensor]:
    """Initial guess: mean of the kept pixels per solve domain (slice or image), and 'image has any'.

    A slice without kept pixels (slicewise) gets the mean of the whole volume's kept pixels, the
    constant that satisfies its equations; an image without any kept pixel has no solution.
    """
    all_dims = tuple(range(2, known.ndim))
    count = keep.sum(dim=all_dims, keepdim=True)
    image_mean = known.sum(dim=all_dims, keepdim=True) / count.clamp_min(1)
    if not slicewise:
        return image_mean, count.flatten(1)[:, 0] > 0
    dims = tuple(range(3, known.ndim))
    slice_count = keep.sum(dim=dims, keepdim=True)
    slice_mean = known.sum(dim=dims, keepdim=True) / slice_count.clamp_min(1)
    return torch.where(slice_count > 0, slice_mean, image_mean), count.flatten(1)[:, 0] > 0


def _batched_cg(apply, b: Tensor, x: Tensor, precond: Tensor, tol: float, max_iter: int) -> Tensor:
    """Jacobi-preconditioned CG for many independent SPD systems (one per leading row).

    A row stops moving once ||r|| <= tol * max(||b||, ||r_0||); the loop ends when all rows have.
    """
    dims = tuple(range(1, b.ndim))
    view = (-1,) + (1,) * (b.ndim - 1)
    r = b - apply(x)
    z = r / precond
    p = z
    rz = (r * z).sum(dim=dims)
    goal = tol * torch.maximum(b.flatten(1).norm(dim=1), r.flatten(1).norm(dim=1))
    for it in range(max_iter):
        active = r.flatten(1).norm(dim=1) > goal
        if it % 4 == 0 and not bool(active.any()):  # a host sync every few iterations only
            break
        ap = apply(p)
        pap = (p * ap).sum(dim=dims)
        alpha = torch.where(active, rz / torch.where(active, pap, 1.0), 0.0)
        x = x + alpha.view(view) * p
        r = r - alpha.view(view) * ap
        z = r / precond
        rz_new = (r * z).sum(dim=dims)
        beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
        p = z + beta.view(view) * p
        rz = torch.where(active, rz_new, rz)
    return x


def noisy_linear_imputation(images: Tensor, removed: Tensor, noise: float = 0.01,
                            noise_field: Tensor | None = None, generator: torch.Generator | None = None,
                            volume_mode: str = "slicewise", tol: float = 1e-6, max_iter: int = 0) -> Tensor:
    """Fill the ``removed`` pixels (M, *S) of ``images`` (M, C, *S) by noisy linear imputation.

    Each removed value solves ``deg_i x_i - sum_j w_ij x_j = 0`` over its in-image neighbours j
    (``deg_i`` the sum of their weights: out-of-image neighbours are dropped and the rest
    renormalised, as in the reference), known neighbours on the right-hand side; channels are
    solved separately. Then ``noise * ξ`` is added to the imputed values only, ξ = ``noise_field``
    (broadcastable to the images) or standard normal draws from ``generator``.

    ``tol`` is the relative residual at which CG stops; ``max_iter`` 0 means 8 × the largest
    spatial side. Images without any kept pixel have no solution and come back as NaN.
    """
    if images.ndim not in (4, 5) or removed.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(f"road: images (M, C, *S) and removed (M, *S) expected, got "
                         f"{tuple(images.shape)} and {tuple(removed.shape)}")
    if volume_mode not in VOLUME_MODES:
        raise ValueError(f"road: volume_mode must be one of {VOLUME_MODES}, got {volume_mode!r}")
    m, c = images.shape[:2]
    size = tuple(images.shape[2:])
    kernel = neighbour_kernel(len(size), volume_mode, images.dtype, images.device)
    gone = removed.to(images.dtype).unsqueeze(1).expand(m, c, *size).reshape(m * c, 1, *size)
    keep = 1 - gone
    known = images.reshape(m * c, 1, *size) * keep
    degree = _conv(torch.ones((1, 1) + size, dtype=images.dtype, device=images.device), kernel)
    rhs = gone * _conv(known, kernel)
    guess, solvable = _known_means(known, keep, len(size) == 3 and volume_mode == "slicewise")
    max_iter = max_iter or 8 * max(size)
    # Converged rows and the zero entries outside the removed set stay exactly where they are.
    solution = _batched_cg(lambda u: gone * (degree * u - _conv(u, kernel)), rhs, gone * guess,
                           degree, tol, max_iter)
    if noise:
        if noise_field is None:
            noise_field = torch.randn(images.shape, generator=generator, dtype=images.dtype,
                                      device=images.device)
        solution = solution + noise * gone * noise_field.expand(images.shape).reshape(m * c, 1, *size)
    out = (known + solution).reshape(images.shape)
    unsolvable = ~solvable.view(m, c)[:, 0]
    return out.masked_fill(unsolvable.view((-1,) + (1,) * (out.ndim - 1)), math.nan)


# --------------------------------------------------------------------------------------------
# Removal masks and scores
# --------------------------------------------------------------------------------------------

def percentile(values: Tensor, q: Tensor) -> Tensor:
    """numpy's default ('linear') percentile of each row of ``values`` (N, P) at q (Q,) in [0, 100]."""
    ordered = values.sort(dim=1).values
    p = values.shape[1]
    pos = q.to(torch.float64) / 100 * (p - 1)
    lo = pos.floor().long().clamp(0, p - 1)
    hi = (lo + 1).clamp_max(p - 1)
    t = (pos - lo).to(values.dtype)
    a, b = ordered[:, lo], ordered[:, hi]
    diff = b - a
    # numpy's _lerp: from the nearer end, so that t = 1 lands exactly on b
    return torch.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _check(percentiles: Sequence[float], noise: float, tie_noise: float, volume_mode: str, score: str,
           tol: float, max_iter: int, metric: str) -> Tensor:
    q = torch.as_tensor(list(percentiles), dtype=torch.float64)
    if q.ndim != 1 or q.numel() == 0 or not ((q > 0) & (q < 100)).all():
        raise ValueError(f"{metric}: percentiles must be a non-empty list of numbers in (0, 100), got {percentiles!r}")
    if noise < 0 or tie_noise < 0:
        raise ValueError(f"{metric}: noise and tie_noise must be >= 0, got {noise} and {tie_noise}")
    if volume_mode not in VOLUME_MODES:
        raise ValueError(f"{metric}: volume_mode must be one of {VOLUME_MODES}, got {volume_mode!r}")
    if score not in ("prob", "logit"):
        raise ValueError(f"{metric}: score must be 'prob' or 'logit', got {score!r}")
    if not tol > 0 or max_iter < 0:
        raise ValueError(f"{metric}: tol must be > 0 and max_iter >= 0, got {tol} and {max_iter}")
    return q


def road_scores(x: MetricInputs, orders: Sequence[str], percentiles: Sequence[float] = ROAD_PERCENTILES,
                noise: float = 0.01, seed: int = 0, tie_noise: float = 1e-4, volume_mode: str = "slicewise",
                score: str = "prob", tol: float = 1e-6, max_iter: int = 0,
                metric: str = "road") -> tuple[Tensor, Tensor]:
    """Target scores (N, len(orders), Q) of the imputed images, and (N,) 'imputation defined'.

    All (image, order, percentile) rows are imputed and scored in chunks sized by ``x.memory_mb``.
    Noise is drawn once per call from a CPU ``torch.Generator`` seeded with ``seed``: one field per
    (order, percentile) shared by all images, and one tie-breaking field for the ranking. An
    image's value therefore depends neither on the rest of the batch, nor on chunking or device.
    """
    x.require("model", metric=metric)
    q = _check(percentiles, noise, tie_noise, volume_mode, score, tol, max_iter, metric)
    images, heat = x.images, x.heatmaps
    n, c, size = images.shape[0], images.shape[1], tuple(images.shape[2:])
    gen = torch.Generator().manual_seed(int(seed))
    tie = torch.randn(size, generator=gen)
    field = torch.randn((len(ORDERS), q.numel(), c) + size, generator=gen) if noise else torch.zeros(())
    ranking = heat.to(images.dtype).flatten(1)
    if tie_noise:
        ranking = ranking + tie_noise * tie.to(ranking).flatten()
    q = q.to(ranking.device)
    # thresholds (N, Q) and the maps they apply to, per order (pytorch-grad-cam: mask >= percentile)
    ranked = {"morf": ranking, "lerf": 1 - ranking}
    thresholds = {o: percentile(ranked[o], q) for o in orders}
    if noise:
        field = field[[ORDERS.index(o) for o in orders]].to(images)
    n_orders, n_q = len(orders), q.numel()
    rows = n * n_orders * n_q
    per_row = images[0].numel() * images.element_size() * ROAD_MEMORY_FACTOR
    step = chunk_size(per_row, x.memory_mb)
    out = torch.empty(rows, device=images.device, dtype=torch.float32)
    defined = torch.ones(rows, device=images.device, dtype=torch.bool)
    for start in range(0, rows, step):
        row = torch.arange(start, min(start + step, rows), device=images.device)
        img, order, qi = row // (n_orders * n_q), (row // n_q) % n_orders, row % n_q
        gone = torch.zeros((row.numel(), ranking.shape[1]), dtype=torch.bool, device=images.device)
        for o, name in enumerate(orders):  # at most two orders: a loop over names, not images
            sel = order == o
            gone[sel] = ranked[name][img[sel]] >= thresholds[name][img[sel], qi[sel], None]
        gone = gone.view((-1,) + size)
        filled = noisy_linear_imputation(images[img], gone, noise, field[order, qi] if noise else None, None,
                                         volume_mode, tol, max_iter)
        ok = torch.isfinite(filled.flatten(1)).all(dim=1)
        filled = torch.where(ok.view((-1,) + (1,) * (filled.ndim - 1)), filled, images[img])
        out[row] = model_scores(x.model, filled, x.targets[img], score).float()
        defined[row] = ok
    return out.view(n, n_orders, n_q), defined.view(n, -1).all(dim=1)


_DOC_PARAMS = """
    ``percentiles`` Q (default {10, ..., 90}); ``noise`` σ of the imputation noise, absolute, in the
    units of the images (the model inputs); ``seed`` seeds it; ``tie_noise`` [our reading] scale
    of the N(0, 1) field added to the map before ranking (1e-4 as in tleemann/road_evaluation;
    pytorch-grad-cam adds none, and there a map with ties at a percentile can remove every pixel
    and make the solve singular; ``tie_noise=0`` reproduces pytorch-grad-cam); ``volume_mode``
    [our reading] for 3D: ``slicewise`` (2D imputation within each slice along the first spatial
    axis) or ``3d`` (26-neighbourhood); ``score`` 'prob' or 'logit'; ``tol`` / ``max_iter`` for the
    CG solver (relative residual; 0 = 8 × largest side). Not applicable (NaN) where an imputation
    has no kept pixel (only possible with tie_noise=0).
"""


def _value(x: MetricInputs, orders: Sequence[str], metric: str, params: dict) -> tuple[Tensor, Tensor]:
    scores, defined = road_scores(x, orders, metric=metric, **params)
    mean = scores.mean(dim=2)  # (N, orders)
    if orders == ("morf",) or orders == ("lerf",):
        step = chunk_size(x.images[0].numel() * x.images.element_size() * ROAD_MEMORY_FACTOR, x.memory_mb)
        original = torch.cat([model_scores(x.model, x.images[i:i + step], x.targets[i:i + step], params["score"])
                              for i in range(0, x.images.shape[0], step)]).float()
        return mean[:, 0] - original, defined
    return (mean[:, 1] - mean[:, 0]) / 2, defined


def _road_metric(name: str, orders: tuple[str, ...], higher_is_better: bool, summary: str, what: str):
    """Register one ROAD variant; the three share every parameter and differ in the orders only."""
    @register_metric(name, needs=("model",), higher_is_better=higher_is_better, family="faithfulness",
                     summary=summary)
    def metric(x: MetricInputs, percentiles: list = ROAD_PERCENTILES, noise: float = 0.01, seed: int = 0,
               tie_noise: float = 1e-4, volume_mode: str = "slicewise", score: str = "prob",
               tol: float = 1e-6, max_iter: int = 0) -> tuple[Tensor, Tensor]:
        return _value(x, orders, name, dict(percentiles=percentiles, noise=noise, seed=seed, tie_noise=tie_noise,
                      volume_mode=volume_mode, score=score, tol=tol, max_iter=max_iter))
    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = f"ROAD {what}\n\n    Parameters:{_DOC_PARAMS}"
    return metric


road_morf = _road_metric(
    "road_morf", ("morf",), False,
    "ROAD MoRF: mean score change after removing the most relevant pixels (noisy linear imputation)",
    "MoRF: mean over q of s(imputed) - s(original); lower is better.")
road_lerf = _road_metric(
    "road_lerf", ("lerf",), True,
    "ROAD LeRF: mean score change after removing the least relevant pixels (noisy linear imputation)",
    "LeRF: mean over q of s(imputed) - s(original); higher is better.")
road_combined = _road_metric(
    "road_combined", ("morf", "lerf"), True,
    "ROAD combined: mean over percentiles of (LeRF score - MoRF score) / 2",
    "Combined (pytorch-grad-cam ROADCombined): (LeRF - MoRF) / 2; higher is better.")
