"""Similarities of map pairs (N, *S) -> (N,): SSIM, Pearson, Spearman, cosine, top-k IoU
(docs/metrics.md §5). The robustness metrics compare clean and perturbed maps with them, the
randomisation check (sanity) original and randomised-model maps, the axioms channel effects.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def ssim(a: Tensor, b: Tensor, win_size: int = 7, data_range: float = 1.0,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM per map pair (N,), 2D or 3D, equal to ``skimage.metrics.structural_similarity``
    with its defaults (uniform window of 7, sample covariance, mean over fully-inside windows)."""
    # Window sums of x, y, x² + y² and xy (the formula needs vx + vy only, not each), in float64
    # (the variances are differences of window sums), by a separable box filter: a running sum
    # along the last axis differenced at distance win, sums of shifted slabs along the others.
    # SSIM is written in the sums (the window volume cancels). On the CPU the maps go in chunks
    # of about 2 MB of sums, which stay in cache across the ~25 passes.
    size = tuple(a.shape[1:])
    nd = len(size)
    win = min(win_size, *size)
    win -= 1 - win % 2  # odd, as skimage requires
    vol = win ** nd
    cov_norm = vol / (vol - 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    valid = tuple(s - win + 1 for s in size)
    n, dev = a.shape[0], a.device
    step = max(1, ((1 << 21) if dev.type == "cpu" else (1 << 28)) // (32 * math.prod(size)))
    total = torch.empty(n, dtype=torch.float64, device=dev)

    def chunk(i: int) -> None:
        j = min(n, i + step)
        m = torch.empty((j - i, 4) + size[:-1] + (size[-1] + 1,), dtype=torch.float64, device=dev)
        m[..., 0] = 0
        x, y, q, xy = m[..., 1:].unbind(1)
        x.copy_(a[i:j])
        y.copy_(b[i:j])
        torch.mul(x, x, out=q).addcmul_(y, y)
        torch.mul(x, y, out=xy)
        m = m.cumsum(dim=-1)
        t = m[..., win:] - m[..., :-win]
        for d in range(2, nd + 1):  # by doubling: sums of width 2w from two of width w
            sums, w = {1: t}, 1
            while 2 * w <= win:
                length = sums[w].shape[d] - w
                sums[2 * w] = sums[w].narrow(d, 0, length) + sums[w].narrow(d, w, length)
                w *= 2
            acc, have = sums[w], w
            while have < win:
                part = 1 << ((win - have).bit_length() - 1)
                length = t.shape[d] - have - part + 1
                acc = acc.narrow(d, 0, length) + sums[part].narrow(d, have, length)
                have += part
            t = acc
        sx, sy, sq, sxy = t.unbind(1)
        # with sums s = vol * mean: ssim = 4 (sx sy + c1 vol²/2) (sxy - sx sy / vol + c2 vol / (2 cov_norm))
        #                               / ((sx² + sy² + c1 vol²) (sq - (sx² + sy²) / vol + c2 vol / cov_norm))
        pxy = sx * sy
        u2 = (sx * sx).addcmul_(sy, sy)
        num = torch.add(pxy, c1 * vol * vol / 2)
        num *= torch.add(sxy, pxy, alpha=-1 / vol).add_(c2 * vol / (2 * cov_norm))
        den = torch.add(sq, u2, alpha=-1 / vol).add_(c2 * vol / cov_norm)
        den *= u2.add_(c1 * vol * vol)
        total[i:j] = num.div_(den).flatten(1).sum(dim=1)

    # CPU threads take whole chunks, each op on one thread: splitting each of the ~1000 small ops
    # over the intra-op threads puts a barrier in each, and on a shared CPU a descheduled thread
    # stalls them all (2 threads on 2 busy cores ran 100x slower than 1).
    starts = range(0, n, step)
    threads = torch.get_num_threads()
    if dev.type != "cpu" or threads == 1:
        for i in starts:
            chunk(i)
    else:
        from concurrent.futures import ThreadPoolExecutor
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(threads, len(starts))) as pool:
                list(pool.map(chunk, starts))
        finally:
            torch.set_num_threads(threads)
    return (total * (4 / math.prod(valid))).float()


def pearson(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson correlation per map pair (N,); 0 when either map is constant."""
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)).float()


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..P per row (N, P), ties given their mean rank (``scipy.stats.rankdata``'s 'average')."""
    n, p = values.shape
    sorted_vals, order = values.sort(dim=1, stable=True)
    new_run = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_run[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    run = new_run.long().cumsum(dim=1) - 1 + torch.arange(n, device=values.device)[:, None] * p  # global run id
    positions = torch.arange(1, p + 1, device=values.device, dtype=torch.float64).expand(n, p)
    total = torch.zeros(n * p, device=values.device, dtype=torch.float64).index_add_(
        0, run.flatten(), positions.flatten())
    count = torch.zeros(n * p, device=values.device, dtype=torch.float64).index_add_(
        0, run.flatten(), torch.ones(n * p, device=values.device, dtype=torch.float64))
    mean_rank = (total / count.clamp_min(1))[run]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per pair (N,) with average ranks for ties (= ``scipy.stats.spearmanr``);
    0 when either map is constant."""
    return pearson(average_ranks(a.flatten(1).double()), average_ranks(b.flatten(1).double()))


def spearman_abs(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of absolute values (Adebayo et al.'s and Quantus MPRT's default)."""
    return spearman(a.abs(), b.abs())


def cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    x, y = a.flatten(1).double(), b.flatten(1).double()
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)).float()


def top_mask(maps: Tensor, top_percent: float) -> Tensor:
    """(N, P) bool: the ceil(top_percent % of P) highest values of each map (ties by first index)."""
    flat = maps.flatten(1)
    k = max(1, math.ceil(flat.shape[1] * top_percent / 100))
    order = flat.argsort(dim=1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def topk_iou(a: Tensor, b: Tensor, top_percent: float = 20.0) -> Tensor:
    """IoU of the two maps' top ``top_percent`` % pixel sets (default 20 %, docs/metrics.md §5)."""
    ma, mb = top_mask(a, top_percent), top_mask(b, top_percent)
    return ((ma & mb).sum(1).double() / (ma | mb).sum(1).double()).float()


SIMILARITIES = {"ssim": ssim, "pearson": pearson, "spearman": spearman, "spearman_abs": spearman_abs,
                "cosine": cosine, "topk_iou": topk_iou}


def similarity(name: str, a: Tensor, b: Tensor, metric: str, top_percent: float = 20.0) -> Tensor:
    if name not in SIMILARITIES:
        raise ValueError(f"{metric}: similarity must be one of {sorted(SIMILARITIES)}, got {name!r}")
    if name == "topk_iou":
        if not 0 < top_percent <= 100:
            raise ValueError(f"{metric}: top_percent must be in (0, 100], got {top_percent}")
        return topk_iou(a, b, top_percent)
    return SIMILARITIES[name](a.float(), b.float())
