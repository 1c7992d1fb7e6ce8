"""ROAD, Remove And Debias (Rong et al., ICML 2022; docs/metrics.md §1).

Pixels ranked by the heatmap are removed and filled by **noisy linear imputation**: every removed
pixel equals the weighted mean of its in-image neighbours (weights 1/6 edge, 1/12 diagonal), known
neighbours act as boundary values, and i.i.d. Gaussian noise (σ = ``noise``) is added to the
imputed values. The reference code (``tleemann/road_evaluation``, copied into pytorch-grad-cam)
assembles one sparse system per image and calls ``scipy.sparse.linalg.spsolve`` on the CPU. Here
the same system is solved for all (image, order, percentile, channel) at once on the device by
conjugate gradients: the system matrix ``D - W`` restricted to the removed pixels is symmetric
positive definite whenever the image keeps at least one pixel, and applying it is two separable
[1, 2, 1] passes (the reference weights, also per slice) or, for the 3D 26-neighbourhood, one
3×3×3 convolution. Converged rows leave the batch as they finish, and on the CPU the rows go in
cache-sized blocks.

The per-image scores follow pytorch-grad-cam's ``ROADMostRelevantFirstAverage``,
``ROADLeastRelevantFirstAverage`` and ``ROADCombined``: for percentile q, MoRF removes the pixels
whose map value is >= the q-th percentile of the map, LeRF those whose ``1 - map`` is >= the q-th
percentile of ``1 - map`` (numpy's linear interpolation); the value is the mean over q of
``s(imputed) - s(original)``, and combined is ``(LeRF - MoRF) / 2`` (the original score cancels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    SCORES,
    MetricInputs,
    chunk_size,
    model_logits,
    model_scores,
    register_metric,
    table_cached,
    target_scores,
)

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
EDGE_WEIGHT, DIAGONAL_WEIGHT = 1 / 6, 1 / 12   # reference imputer's neighbour weights (2D)
VOLUME_MODES = ("slicewise", "3d")
ORDERS = ("morf", "lerf")
# Working memory of one (image, order, percentile) row in multiples of the image's bytes: the CG
# vectors and masks (about 12) plus the model forward on the imputed image.
ROAD_MEMORY_FACTOR = 24
CPU_BLOCK_BYTES = 2 ** 20   # size of one CG vector per block of images on the CPU (cache-sized)


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


def _padded(t: Tensor, pad: int) -> Tensor:
    """``t`` (R, *S) with ``pad`` trailing axes zero-padded by one on each side."""
    return F.pad(t, (1, 1) * pad)


def _interior(t: Tensor, pad: int) -> Tensor:
    return t[(..., ) + (slice(1, -1),) * pad]


def _neighbour_sum_121(u: Tensor) -> Tensor:
    """(R, ..., H+2, W+2) zero-ringed -> (R, ..., H, W): correlation with [1, 2, 1] ⊗ [1, 2, 1]."""
    h = u[..., :-2] + u[..., 2:]
    h.add_(u[..., 1:-1], alpha=2)
    v = h[..., :-2, :] + h[..., 2:, :]
    return v.add_(h[..., 1:-1, :], alpha=2)


class _System:
    """The operator ``A u = deg ⊙ u - gone ⊙ (K * u)`` on vectors that vanish off the removed set.

    Vectors live in a zero-ringed layout (R, 1, *S + 2): every CG vector is zero off the removed
    set, so the ring stays zero and no padding is needed per product. For the reference 2D weights
    (also slicewise) ``K = ([1,2,1] ⊗ [1,2,1] - 4 δ) / 12``, two separable passes, and since
    ``gone ⊙ u = u`` the operator is ``(deg + 1/3) ⊙ u - (gone / 12) ⊙ ([1,2,1]⊗[1,2,1] * u)``;
    the 26-neighbourhood goes through conv3d.
    """

    def __init__(self, kernel: Tensor, degree: Tensor, separable: bool):
        self.kernel, self.separable, self.degree = kernel, separable, degree
        self.pad = 2 if separable else kernel.ndim - 2
        self.diag = degree + 1 / 3 if separable else degree
        self.scale = 1 / 12 if separable else 1.0

    def neighbours(self, u: Tensor) -> Tensor:
        if self.separable:
            return _neighbour_sum_121(u)
        return F.conv3d(u, self.kernel)

    def apply(self, u: Tensor, coupling: Tensor, out: Tensor) -> Tensor:
        inner = _interior(out, self.pad)
        torch.mul(_interior(u, self.pad), self.diag, out=inner)
        inner.addcmul_(coupling, self.neighbours(u), value=-1)
        return out


def _batched_cg(system: _System, coupling: Tensor, b: Tensor, x: Tensor, tol: float, max_iter: int) -> Tensor:
    """CG for many independent SPD systems (one per leading row), in place on ``x``.

    A row stops moving once ||r|| <= tol * max(||b||, ||r_0||). Converged rows are dropped from
    the batch every few iterations (a host sync), so the cost follows the rows still running.
    No preconditioner: the diagonal is 1 except on the image border, and Jacobi scaling saved
    about 3 % of the iterations at the price of two of the ~12 passes per iteration.
    """
    flat = lambda t: t.flatten(1)  # noqa: E731
    sq_norm = lambda t: torch.linalg.vector_norm(flat(t), dim=1).square()  # noqa: E731
    view = (-1,) + (1,) * (b.ndim - 1)
    out, ap = x, torch.zeros_like(b)
    r = b - system.apply(x, coupling, ap)
    rr = sq_norm(r)
    goal = tol * tol * torch.maximum(sq_norm(b), rr)
    keep = (rr > goal).nonzero().squeeze(1)
    rows, x, r, rr, goal, coupling = keep, x[keep], r[keep], rr[keep], goal[keep], coupling[keep]
    ap = ap[: rows.numel()]
    p = r.clone()
    active = torch.ones_like(rr, dtype=torch.bool)
    for it in range(max_iter):
        if it % 4 == 0:
            n_active = int(active.sum())
            if n_active == 0:
                break
            if n_active <= 7 * rows.numel() // 8:   # compact: write back the converged rows
                out[rows] = x
                keep = active.nonzero().squeeze(1)
                rows, x, r, p, rr, goal, coupling = (t[keep] for t in (rows, x, r, p, rr, goal, coupling))
                ap, active = ap[: rows.numel()], active[keep]
        system.apply(p, coupling, ap)
        pap = torch.linalg.vecdot(flat(p), flat(ap))
        alpha = torch.where(active, rr / pap, 0.0).view(view)  # frozen rows: 0, whatever pap is
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        rr_new = sq_norm(r)
        beta = torch.where(active, rr_new / rr, 0.0)
        p = torch.addcmul(r, beta.view(view), p)
        rr = torch.where(active, rr_new, rr)
        active = rr_new > goal
    out[rows] = x
    return out


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
    system = _System(kernel, _conv(torch.ones((1, 1) + size, dtype=images.dtype, device=images.device), kernel),
                     separable=len(size) == 2 or volume_mode == "slicewise")
    if noise and noise_field is None:
        noise_field = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    if noise:
        noise_field = noise_field.expand(images.shape)
    max_iter = max_iter or 8 * max(size)
    # On the CPU, images go through CG in blocks whose vectors fit in cache (~1 MB each): the
    # ~12 passes per iteration then run from cache, not memory. Rows are independent, so the
    # blocks change nothing but the speed.
    step = m
    if images.device.type == "cpu":
        step = max(1, CPU_BLOCK_BYTES // (c * math.prod(s + 2 for s in size) * images.element_size()))
    out = torch.empty_like(images)

    def block(i: int) -> None:
        j = min(m, i + step)
        out[i:j] = _impute_block(system, images[i:j], removed[i:j], noise,
                                 noise_field[i:j] if noise else None, volume_mode, tol, max_iter)

    _each_block(block, range(0, m, step), images.device)
    return out


def _each_block(fn, starts: range, device: torch.device) -> None:
    """``fn(start)`` for every block; on a multi-threaded CPU, blocks in parallel, each on one thread.

    CG is thousands of small passes; splitting every pass over the intra-op threads puts a barrier
    in each, and on a shared CPU one descheduled thread stalls them all (2 threads on 2 busy cores
    ran 10× slower than 1). Whole blocks per thread need no barriers. The torch thread count is
    set to 1 for the duration and restored.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        for start in starts:
            fn(start)
        return
    torch.set_num_threads(1)
    try:
        if len(starts) == 1:
            fn(starts[0])
        else:
            with ThreadPoolExecutor(min(threads, len(starts))) as pool:
                list(pool.map(fn, starts))
    finally:
        torch.set_num_threads(threads)


def _impute_block(system: _System, images: Tensor, removed: Tensor, noise: float, noise_field: Tensor | None,
                  volume_mode: str, tol: float, max_iter: int) -> Tensor:
    m, c = images.shape[:2]
    size = tuple(images.shape[2:])
    gone = removed.to(images.dtype).unsqueeze(1).expand(m, c, *size).reshape(m * c, 1, *size)
    keep = 1 - gone
    known = images.reshape(m * c, 1, *size) * keep
    guess, solvable = _known_means(known, keep, len(size) == 3 and volume_mode == "slicewise")
    pad = system.pad
    rhs = system.neighbours(_padded(known, pad))
    if system.separable:  # known ⊙ gone = 0: the centre term of K drops out
        rhs = rhs / 12
    coupling = gone * system.scale
    # Converged rows and the zero entries outside the removed set stay exactly where they are.
    solution = _interior(_batched_cg(system, coupling, _padded(gone * rhs, pad), _padded(gone * guess, pad),
                                     tol, max_iter), pad)
    if noise:
        solution = solution + noise * gone * noise_field.reshape(m * c, 1, *size)
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

    All (image, order, percentile) rows are imputed and scored in chunks sized by ``x.context.memory_mb``.
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
    step = chunk_size(per_row, x.context.memory_mb)
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
        source = images[img]
        filled = noisy_linear_imputation(source, gone, noise, field[order, qi] if noise else None, None,
                                         volume_mode, tol, max_iter)
        ok = torch.isfinite(filled.flatten(1)).all(dim=1)
        if not bool(ok.all()):
            filled = torch.where(ok.view((-1,) + (1,) * (filled.ndim - 1)), filled, source)
        out[row] = model_scores(x.context.model, filled, x.targets[img], score).float()
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
    # Both orders are imputed and scored once per (heatmaps, parameters) and shared by road_morf,
    # road_lerf and road_combined through the table's cache (the workflow computes all three).
    def both_orders() -> tuple[Tensor, Tensor]:
        scores, defined = road_scores(x, ORDERS, metric=metric, **params)
        return scores.mean(dim=2), defined  # (N, [morf, lerf])

    mean, defined = table_cached(x, ("road", repr(sorted(params.items()))), (x.heatmaps, x.images, x.context.model),
                                 both_orders)
    if orders == ("morf",) or orders == ("lerf",):
        original = target_scores(model_logits(x), x.targets, params["score"]).float()
        return mean[:, ORDERS.index(orders[0])] - original, defined
    return (mean[:, 1] - mean[:, 0]) / 2, defined


def _road_metric(name: str, orders: tuple[str, ...], higher_is_better: bool, summary: str, what: str):
    """Register one ROAD variant; the three share every parameter and differ in the orders only."""
    @register_metric(name, bounds={"percentiles": "each (0, 100)", "noise": "[0, inf)", "tie_noise": "[0, inf)",
                                   "volume_mode": VOLUME_MODES, "score": SCORES, "tol": "(0, inf)",
                                   "max_iter": "int [0, inf)"},
                     needs=("model",), higher_is_better=higher_is_better, family="faithfulness",
                     # both orders at every percentile, shared by the three variants (cambench.plan)
                     cost=lambda p, layer: {"forward": len(ORDERS) * len(p["percentiles"]),
                                            "once": ("road", repr(sorted(p.items())))},
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
