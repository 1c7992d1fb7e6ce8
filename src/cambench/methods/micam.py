"""MI-CAM: channel weights from the mutual information between each up-sampled activation map and
the input image (docs/methods.md §2.13). Every step is the project's own reading of the abstract.

Histograms of all (image, channel) pairs of a chunk are built at once with one ``bincount`` over
combined bin indices, on the images' device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..engine import CamError, CamInputs, register_method
from ..utils import upsample

MICAM_PAIRS = ("map_vs_image", "masked_vs_image")


def quantise(values: Tensor, bins: int) -> Tensor:
    """Bin index floor(v * bins) of values in [0, 1], with 1 in the last bin."""
    return (values * bins).floor().long().clamp_(0, bins - 1)


def _unit_range(values: Tensor) -> Tensor:
    """Min-max of each row (M, P) to [0, 1]; constant rows become 0."""
    lo = values.min(dim=1, keepdim=True).values
    span = values.max(dim=1, keepdim=True).values - lo
    return torch.where(span > 0, (values - lo) / span.clamp_min(torch.finfo(values.dtype).tiny), 0.0)


def _entropy(p: Tensor) -> Tensor:
    return -(p * torch.where(p > 0, p.log(), 0.0)).sum(dim=1)


def mutual_information(a: Tensor, b: Tensor, bins: int, normalised: bool = False) -> Tensor:
    """Mutual information (nats) between the bin indices a and b (M, P) of each row, from joint histograms.

    MI = sum_{a,b} P(a,b) log(P(a,b) / (P(a) P(b))). ``normalised``: NMI = 2 MI / (H(a) + H(b)),
    0 where both rows are constant (our choice; sklearn returns 1 there).
    """
    m, p = a.shape
    dtype = torch.float64 if a.device.type != "mps" else torch.float32
    rows = torch.arange(m, device=a.device)[:, None]
    joint = torch.bincount((rows * bins * bins + a * bins + b).flatten(), minlength=m * bins * bins)
    joint = joint.view(m, bins, bins).to(dtype) / p
    p_a, p_b = joint.sum(dim=2), joint.sum(dim=1)
    ratio = joint / (p_a[:, :, None] * p_b[:, None, :])
    mi = (joint * torch.where(joint > 0, ratio.log(), 0.0)).sum(dim=(1, 2)).clamp_min(0)
    if normalised:
        denominator = _entropy(p_a) + _entropy(p_b)
        mi = torch.where(denominator > 0, 2 * mi / denominator.clamp_min(torch.finfo(dtype).tiny), 0.0)
    return mi


@register_method("micam", bounds={"bins": "int [2, inf)", "pair": MICAM_PAIRS},
                 needs_gradients=False, reads_target=False, cost={}, channel_weights=True,  # histograms only
                 our_reading="all of it: bins 32, unnormalised MI, map vs image, unnormalised weights",
                 summary="MI-CAM: channel weights = mutual information of each up-sampled map with the image "
                         "(class-agnostic)")
def micam(x: CamInputs, bins: int = 32, normalised: bool = False, pair: str = "map_vs_image",
          normalise_weights: bool = False) -> Tensor:
    """w_k = MI(quantised H^k, quantised I); the map is sum_k w_k A^k. All of it is our reading.

    - H^k = min-max of A^k up-sampled to the input ((bi/tri)linear, align_corners=False); a
      constant channel gives H^k = 0 and MI = 0.
    - I = channel mean of the model input, min-max rescaled to [0, 1] per image.
    - Both quantised into ``bins`` equal bins of [0, 1]; MI in nats from their joint histogram.
    - ``normalised``: NMI = 2 MI / (H(I) + H(H^k)) instead of MI.
    - ``pair``: ``map_vs_image`` (MI of H^k with I) or ``masked_vs_image`` (MI of the masked
      grayscale image I * H^k with I).
    - ``normalise_weights``: divide the weights by their sum over channels.

    The weights do not depend on the target class: MI-CAM is class-agnostic (like Eigen-CAM),
    and nothing here makes it class-specific. Rows (image, channel) are processed in chunks
    sized from the memory budget.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise CamError(f"micam 'bins' must be an integer >= 2, got {bins!r}")
    if pair not in MICAM_PAIRS:
        raise CamError(f"micam 'pair' must be one of {MICAM_PAIRS}, got {pair!r}")
    for name, value in (("normalised", normalised), ("normalise_weights", normalise_weights)):
        if not isinstance(value, bool):
            raise CamError(f"micam '{name}' must be true or false, got {value!r}")
    if x.images is None:
        raise CamError("micam needs the input images")
    acts, images = x.activations, x.images
    n, k = acts.shape[:2]
    size = images.shape[2:]
    pixels = images[0, 0].numel()
    gray = _unit_range(images.mean(dim=1).flatten(1).float())                  # (N, P)
    gray_bins = quantise(gray, bins)
    flat = acts.reshape((n * k, 1) + acts.shape[2:])
    # per row: up-sampled map and its bins (float + 2 int64 index arrays) and the histogram
    chunk = x.rows_per_chunk(pixels * 32 + bins * bins * 48)
    weights = []
    for start in range(0, n * k, chunk):
        rows = torch.arange(start, min(start + chunk, n * k), device=acts.device)
        image = rows // k
        up = upsample(flat[rows].float(), size)
        maps = _unit_range(up.flatten(1))
        if pair == "masked_vs_image":
            maps = gray[image] * maps
        weights.append(mutual_information(quantise(maps, bins), gray_bins[image], bins, normalised))
    w = torch.cat(weights).view(n, k)
    if normalise_weights:
        total = w.sum(dim=1, keepdim=True)
        w = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 0.0)
    return w.to(acts.dtype)
