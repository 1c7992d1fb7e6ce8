"""CF-CAM, Cluster Filter CAM (He, Pan, Yao; docs/methods.md §2.12), batched over the images of a batch.

Per image: the channels with the largest L2 norms keep their Grad-CAM weight; the others are
clustered with DBSCAN, each cluster's mean gradient is filtered and its spatial mean becomes the
weight of every member; noise channels are dropped; a softmax over the kept channels gives the
final weights. DBSCAN runs in torch on all images of a chunk at once (:func:`dbscan`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import CamError, CamInputs, register_method

CFCAM_FILTERS = ("code", "gaussian")
CFCAM_NORMALISE = ("code", "minmax")  # the engine's final scaling: the code's divide-by-max, or min-max
MIN_EPS = 1e-5            # the code's lower bound on the DBSCAN radius
KERNEL_SUM_EPS = 1e-6     # the code's epsilon when normalising the bilateral-like kernel
LABEL_IMPORTANT = -2      # labels returned by cfcam_weights: important channel / DBSCAN noise
LABEL_NOISE = -1
# Bytes per (image, channel, channel) entry that the distance matrix, its sort and the label
# propagation hold at once; sizes the image chunks from the memory budget.
PAIR_BYTES = 40


# --------------------------------------------------------------------------------------------
# Batched helpers
# --------------------------------------------------------------------------------------------

def masked_percentile(values: Tensor, valid: Tensor, q: float, multiplicity: int = 1) -> Tensor:
    """NumPy's default ('linear') percentile q in [0, 100] over the valid entries of each row.

    values, valid: (N, M). Every valid entry counts ``multiplicity`` times (2 gives the percentile
    of a symmetric matrix's off-diagonal entries from its upper triangle alone). Returns (N,);
    NaN for rows without a valid entry.
    """
    if values.shape[1] == 0:
        return values.new_full(values.shape[:1], math.nan)
    count = valid.sum(dim=1) * multiplicity
    ordered = torch.where(valid, values, torch.full_like(values, math.inf)).sort(dim=1).values
    position = (count - 1).clamp_min(0).double() * (q / 100.0)
    lo = position.floor().long()
    hi = torch.minimum(lo + 1, (count - 1).clamp_min(0))
    frac = (position - lo.double()).to(values.dtype)
    v_lo = ordered.gather(1, (lo // multiplicity)[:, None]).squeeze(1)
    v_hi = ordered.gather(1, (hi // multiplicity)[:, None]).squeeze(1)
    step = v_hi - v_lo
    # NumPy's two-sided interpolation (exact at both ends)
    out = torch.where(frac < 0.5, v_lo + step * frac, v_hi - step * (1 - frac))
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def dbscan_from_distances(distances: Tensor, eps: Tensor, min_samples: Tensor,
                          valid: Tensor | None = None) -> Tensor:
    """DBSCAN labels (N, M) for N point sets at once, given their distance matrices (N, M, M).

    Same definition as ``sklearn.cluster.DBSCAN``: neighbours are points at distance <= eps (the
    point itself included), core points have >= min_samples neighbours, clusters are the connected
    components of the core points, a border point joins the cluster of a neighbouring core (the
    one whose lowest core index is smallest, as sklearn's scan order gives), everything else is
    noise (-1). Clusters are numbered 0, 1, ... in the order of their lowest core index, which is
    sklearn's numbering. Invalid points (``valid`` False) are neither neighbours nor clustered (-1).
    ``eps`` and ``min_samples`` are per set (N,) or scalars.
    """
    n, m = distances.shape[:2]
    device = distances.device
    if valid is None:
        valid = torch.ones(n, m, dtype=torch.bool, device=device)
    eps = torch.as_tensor(eps, dtype=distances.dtype, device=device).reshape(-1, 1, 1)
    min_samples = torch.as_tensor(min_samples, device=device).reshape(-1, 1)
    pair_valid = valid[:, :, None] & valid[:, None, :]
    adjacent = (distances <= eps) & pair_valid
    adjacent |= torch.diag_embed(valid)  # a point is its own neighbour (distance 0)
    core = valid & (adjacent.sum(dim=2) >= min_samples)
    core_adjacent = adjacent & core[:, :, None] & core[:, None, :]

    # Connected components of the core graph: every core point takes the smallest label among its
    # core neighbours, then jumps to its label's label (pointer jumping), until nothing changes.
    # Labels are core indices of the same component, so the fixed point is the component's lowest index.
    none = torch.iinfo(torch.int32).max
    index = torch.arange(m, device=device, dtype=torch.int32).expand(n, m)
    label = torch.where(core, index, none)
    for _ in range(m + 1):
        neighbour_min = torch.where(core_adjacent, label[:, None, :], none).amin(dim=2)
        new = torch.where(core, torch.minimum(label, neighbour_min), none)
        new = torch.where(core, new.gather(1, new.clamp(max=m - 1).long()), none)
        if torch.equal(new, label):
            break
        label = new
    # Border points: the lowest component label among their core neighbours.
    border = torch.where(adjacent & core[:, None, :], label[:, None, :], none).amin(dim=2)
    label = torch.where(core, label, border)
    clustered = label != none
    root = core & (label == index)
    cluster_id = root.long().cumsum(dim=1) - 1                      # rank of each root = sklearn's id
    ids = cluster_id.gather(1, label.clamp(max=m - 1).long())
    return torch.where(clustered, ids, torch.full_like(ids, -1))


def dbscan(points: Tensor, eps, min_samples, valid: Tensor | None = None) -> Tensor:
    """DBSCAN (euclidean) of N point sets (N, M, D) at once; see :func:`dbscan_from_distances`."""
    distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
    return dbscan_from_distances(distances, eps, min_samples, valid)


def _spatial_offsets_squared(shape, device, dtype) -> Tensor:
    """sum_d (u_d - s_d / 2)^2 over a grid of ``shape``: the code's kernel centre is size / 2."""
    grids = torch.meshgrid(*[torch.arange(s, device=device, dtype=dtype) - s / 2 for s in shape], indexing="ij")
    return sum(g * g for g in grids)


def _conv(inputs: Tensor, weight: Tensor, groups: int = 1) -> Tensor:
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[inputs.ndim - 2]
    return conv(inputs, weight, groups=groups)


def _same_zero_padding(inputs: Tensor, kernel_shape) -> Tensor:
    """PyTorch's padding='same' done by hand (left (k-1)//2, right the rest), without its warning."""
    pad = []
    for size in reversed(tuple(kernel_shape)):
        pad += [(size - 1) // 2, size - 1 - (size - 1) // 2]
    return F.pad(inputs, pad)


def bilateral_like_filter(maps: Tensor, sigma_s: float = 5.0, sigma_r: float = 0.1) -> Tensor:
    """The code's filter for every map (R, *s) at once: a kernel as large as the map.

    Kernel = exp(-|u - s/2|^2 / (2 sigma_s^2)) * exp(-(g(u) - mean g)^2 / (2 sigma_r^2)), normalised
    to sum 1 (+1e-6), applied as a zero-padded 'same' cross-correlation (PyTorch's 'same' padding).
    """
    shape = maps.shape[1:]
    spatial = torch.exp(-_spatial_offsets_squared(shape, maps.device, maps.dtype) / (2 * sigma_s ** 2))
    dims = tuple(range(1, maps.ndim))
    diff = maps - maps.mean(dim=dims, keepdim=True)
    kernels = spatial * torch.exp(-diff * diff / (2 * sigma_r ** 2))
    kernels = kernels / (kernels.sum(dim=dims, keepdim=True) + KERNEL_SUM_EPS)
    padded = _same_zero_padding(maps.unsqueeze(0), shape)
    return _conv(padded, kernels.unsqueeze(1), groups=maps.shape[0]).squeeze(0)


def gaussian_filter(maps: Tensor, sigma: float = 1.0) -> Tensor:
    """Gaussian low-pass of every map (R, *s): kernel radius ceil(3 sigma), replicate padding."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    taps = torch.exp(-offsets * offsets / (2 * sigma ** 2))
    taps = taps / taps.sum()
    out = maps.unsqueeze(1)
    for axis in range(maps.ndim - 1):  # separable: one 1-D pass per spatial axis
        shape = [1, 1] + [1] * (maps.ndim - 1)
        shape[2 + axis] = taps.numel()
        pad = [0, 0] * (maps.ndim - 1)
        pad[2 * (maps.ndim - 2 - axis)] = pad[2 * (maps.ndim - 2 - axis) + 1] = radius
        out = _conv(F.pad(out, pad, mode="replicate"), taps.view(shape))
    return out.squeeze(1)


# --------------------------------------------------------------------------------------------
# CF-CAM
# --------------------------------------------------------------------------------------------

def _check(importance_percentile, eps_percentile, min_samples_fraction, filter, sigma_s, sigma_r, sigma):
    for name, value in (("importance_percentile", importance_percentile), ("eps_percentile", eps_percentile)):
        if not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise CamError(f"cfcam '{name}' must be a number in [0, 100], got {value!r}")
    if not isinstance(min_samples_fraction, (int, float)) or not 0 <= min_samples_fraction <= 1:
        raise CamError(f"cfcam 'min_samples_fraction' must be a number in [0, 1], got {min_samples_fraction!r}")
    if filter not in CFCAM_FILTERS:
        raise CamError(f"cfcam 'filter' must be one of {CFCAM_FILTERS}, got {filter!r}")
    for name, value in (("sigma_s", sigma_s), ("sigma_r", sigma_r), ("sigma", sigma)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise CamError(f"cfcam '{name}' must be a positive number, got {value!r}")


def _cfcam_chunk(acts: Tensor, grads: Tensor, importance_percentile, eps_percentile, min_samples_fraction,
                 filter, sigma_s, sigma_r, sigma) -> tuple[Tensor, Tensor]:
    n, k = acts.shape[:2]
    spatial = acts.shape[2:]
    flat = acts.reshape(n, k, -1)
    # 1. Importance split by the channels' L2 norms.
    norms = torch.linalg.vector_norm(flat, dim=2)
    threshold = masked_percentile(norms, torch.ones_like(norms, dtype=torch.bool), importance_percentile)
    important = norms >= threshold[:, None]
    rest = ~important
    # 2. DBSCAN of the remaining channels; eps from the off-diagonal distances within the rest.
    distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    # The code takes the percentile over all ordered pairs i != j: each upper-triangle pair twice.
    first, second = torch.triu_indices(k, k, offset=1, device=acts.device)
    pairs = rest[:, first] & rest[:, second]
    eps = masked_percentile(distances[:, first, second], pairs, eps_percentile, multiplicity=2)
    eps = torch.nan_to_num(eps, nan=MIN_EPS).clamp_min(MIN_EPS)  # fewer than two channels left: any eps
    count = rest.sum(dim=1)
    min_samples = torch.floor(count.double() * min_samples_fraction).long().clamp_min(2)
    clusters = dbscan_from_distances(distances, eps, min_samples, rest)   # (N, K), -1 noise / important
    del distances, pairs
    # 3. Weights: Grad-CAM weight for important channels, filtered cluster-mean gradient for members.
    gflat = grads.reshape(n, k, -1)
    weights = gflat.mean(dim=2)
    members = gflat.new_zeros(n, k, k).scatter_(2, clusters.clamp_min(0)[:, :, None],
                                                (clusters >= 0)[:, :, None].to(gflat.dtype))
    sizes = members.sum(dim=1)                                             # (N, K slots)
    means = members.transpose(1, 2) @ gflat                                # (N, K slots, Z)
    used = sizes > 0
    cluster_weight = torch.zeros_like(sizes)
    if used.any():
        mean_gradients = (means[used] / sizes[used][:, None]).reshape((-1,) + tuple(spatial))
        if filter == "code":
            filtered = bilateral_like_filter(mean_gradients, sigma_s, sigma_r)
        else:
            filtered = gaussian_filter(mean_gradients, sigma)
        cluster_weight[used] = filtered.flatten(1).mean(dim=1)
    weights = torch.where(clusters >= 0, cluster_weight.gather(1, clusters.clamp_min(0)), weights)
    # 4. Softmax over the valid channels (important or clustered); noise channels get 0.
    valid = important | (clusters >= 0)
    beta = torch.where(valid, weights, torch.full_like(weights, -math.inf)).softmax(dim=1)
    labels = torch.where(important, torch.full_like(clusters, LABEL_IMPORTANT), clusters)
    return beta, labels


def cfcam_weights(activations: Tensor, gradients: Tensor, importance_percentile: float = 75,
                  eps_percentile: float = 25, min_samples_fraction: float = 0.05, filter: str = "code",
                  sigma_s: float = 5.0, sigma_r: float = 0.1, sigma: float = 1.0,
                  chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """CF-CAM channel weights beta (N, K) and channel labels (N, K).

    Labels: -2 important channel, -1 DBSCAN noise (dropped, beta 0), >= 0 cluster id. beta is
    positive on the valid channels and sums to 1 over them. ``chunk`` images at a time (all if None).
    """
    _check(importance_percentile, eps_percentile, min_samples_fraction, filter, sigma_s, sigma_r, sigma)
    n = activations.shape[0]
    chunk = chunk or max(n, 1)
    parts = [_cfcam_chunk(activations[i:i + chunk], gradients[i:i + chunk], importance_percentile,
                          eps_percentile, min_samples_fraction, filter, sigma_s, sigma_r, sigma)
             for i in range(0, n, chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@register_method("cfcam", bounds={"importance_percentile": "[0, 100]", "eps_percentile": "[0, 100]",
                                  "min_samples_fraction": "[0, 1]", "filter": CFCAM_FILTERS, "sigma_s": "(0, inf)",
                                  "sigma_r": "(0, inf)", "sigma": "(0, inf)", "normalise": CFCAM_NORMALISE},
                 # the code divides the up-sampled ReLU map by its max: the engine's 'max' scaling
                 scaling=lambda p: "max" if p.get("normalise", "code") == "code" else "minmax",
                 reads_target=True, cost={},  # clustering on the shared gradients: no model pass
                 our_reading="filter 'gaussian' (the default, 'code', is the authors' code)",
                 summary="CF-CAM: DBSCAN channel clusters, filtered cluster gradients, softmax weights")
def cfcam(x: CamInputs, importance_percentile: float = 75, eps_percentile: float = 25,
          min_samples_fraction: float = 0.05, filter: str = "code", sigma_s: float = 5.0,
          sigma_r: float = 0.1, sigma: float = 1.0, normalise: str = "code") -> Tensor:
    """Signed CF-CAM map sum_{k in V} beta_k A^k, following the official code's steps [checked-code].

    1. Channels with L2 norm >= the ``importance_percentile`` percentile (NumPy 'linear') are important.
    2. The others are clustered by DBSCAN (euclidean on the flattened maps) with
       eps = max(``eps_percentile`` percentile of their off-diagonal pairwise distances, 1e-5) and
       min_samples = max(2, floor(``min_samples_fraction`` * their count)); noise channels are dropped.
    3. Important channels: w_k = mean G^k. Cluster members: w_k = mean of the filtered cluster-mean gradient.
    4. ``filter``: ``code`` [checked-code] the bilateral-like kernel (``sigma_s``, ``sigma_r``) as
       large as the map; ``gaussian`` [our reading] a Gaussian low-pass of ``sigma`` feature cells
       (replicate padding, our choice). In 3D both kernels are 3D.
    5. beta = softmax of w over the valid channels.

    ``normalise`` (how the engine scales this map): ``code`` [checked-code] ReLU, bilinear
    up-sampling, division by the max with no min subtracted, as the code does (the map keeps its
    floor: softmax weights on non-negative activations rarely leave a zero pixel); ``minmax`` the
    engine's usual min-max, which removes that floor (up to 0.34 apart in review). With fewer than
    two non-important channels, eps falls back to 1e-5 (the code fails there). DBSCAN runs on
    chunks of images sized from the memory budget.
    """
    k = x.activations.shape[1]
    chunk = x.rows_per_chunk(k * k * PAIR_BYTES)
    beta, _ = cfcam_weights(x.activations, x.gradients, importance_percentile, eps_percentile,
                            min_samples_fraction, filter, sigma_s, sigma_r, sigma, chunk)
    return (beta.view(beta.shape + (1,) * len(x.spatial_dims)) * x.activations).sum(dim=1)
