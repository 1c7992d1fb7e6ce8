"""MetaCAM (Kaczmarek et al., arXiv 2307.16863; methods.md §2.11): consensus of the top-k % pixels.

Only the abstract is published; everything here is **our reading** of it (methods.md tags it so):

* components: the CAMs pytorch-grad-cam offered in mid-2023. FullGrad is not implemented in
  cambench (it needs the biases of every layer, not one target layer), so the default is the
  other ten, restricted to those registered;
* ``gated_mean``: ``M = (1/N) Σ_i B_i C_i`` with ``B_i`` the top-k % pixels of component map C_i;
  ``vote``: ``M = (1/N) (Σ_i B_i + ½ · mean_i C_i)``: the number of votes, ties broken by the mean
  activation (the ½ keeps the tie-breaker below one vote);
* a pixel with ``C_i = 0`` is never in component i's top set (it would only get in through ties
  at zero, e.g. for a ReLU'd map with fewer than k % positive pixels);
* adaptive k: per image, the k of ``k_grid`` that maximises a registered metric (ROAD combined by
  default) of the thresholded consensus map, chosen on the other images of the batch
  (``held_out``) or on the image itself (``same_image``, optimistic);
* the Cumulative Residual Effect over ensemble sweeps (:func:`cumulative_residual_effect`).

Component maps come from ``x.method_map`` (post-processed to [0, 1] at input resolution and cached
per batch), so an ensemble costs the sum of its components once.
"""
from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..engine import METHODS, CamError, CamInputs, Targets, explain_many, register_method
from ..metrics import METRICS, MetricInputs, evaluate
from ..metrics.road import percentile
from ..registry import UnknownNameError

# The pytorch-grad-cam CAMs of July 2023 (methods.md §2.11) that cambench implements; FullGrad is not.
DEFAULT_COMPONENTS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "ablationcam",
                      "scorecam", "eigencam", "eigengradcam", "layercam")
CONSENSUS = ("gated_mean", "vote")
K_SELECTION = ("held_out", "same_image")
CRE_MODES = ("residual", "marginal")
K_GRID = tuple(range(5, 101, 5))
DEFAULT_K = 10.0
VOTE_TIE_WEIGHT = 0.5  # weight of the mean activation in 'vote': below one vote, so it only breaks ties


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

def _component_spec(components, component_params) -> list[tuple[str, dict]]:
    """(name, params) of each component, validated."""
    if isinstance(components, str) or not isinstance(components, Sequence) or not components:
        raise CamError(f"metacam: components must be a non-empty list of method names, got {components!r}")
    names = [str(c) for c in components]
    if tuple(names) == DEFAULT_COMPONENTS:  # the default: whichever of them are registered
        names = [c for c in names if c in METHODS]
    if len(set(names)) != len(names):
        raise CamError(f"metacam: components must not repeat, got {names}")
    for name in names:
        if name == "metacam":
            raise CamError("metacam: a component cannot be metacam itself")
        if name not in METHODS:
            raise CamError(f"metacam: component '{name}' is not a registered method; registered: "
                           f"{', '.join(METHODS.names())}")
    params = {} if component_params is None else component_params
    if not isinstance(params, Mapping):
        raise CamError(f"metacam: component_params must be a mapping name -> parameters, got {params!r}")
    stray = sorted(set(params) - set(names))
    if stray:
        raise CamError(f"metacam: component_params names methods that are not components: {stray}")
    spec = []
    for name in names:
        p = params.get(name) or {}
        if not isinstance(p, Mapping):
            raise CamError(f"metacam: component_params['{name}'] must be a mapping, got {p!r}")
        try:
            METHODS.get(name).check_params(dict(p), where="metacam component_params")
        except ValueError as err:
            raise CamError(str(err)) from None
        spec.append((name, dict(p)))
    return spec


def _needs_gradients(params: dict) -> bool:
    spec = _component_spec(params.get("components", DEFAULT_COMPONENTS), params.get("component_params"))
    for name, p in spec:
        need = METHODS.get(name).meta.get("needs_gradients", True)
        if need(p) if callable(need) else need:
            return True
    return False


def _extra_layers(params: dict) -> list[str]:
    spec = _component_spec(params.get("components", DEFAULT_COMPONENTS), params.get("component_params"))
    layers: list[str] = []
    for name, p in spec:
        entry = METHODS.get(name)
        extra = entry.meta.get("extra_layers")
        if extra is not None:
            layers += list(extra({**entry.parameters(), **p}))
    return list(dict.fromkeys(layers))


def _check_k(k, name: str = "k") -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 100:
        raise CamError(f"metacam: {name} must be a percentage in (0, 100], got {k!r}")
    return float(k)


def _check_choice(value, allowed: Sequence[str], name: str) -> str:
    if value not in allowed:
        raise CamError(f"metacam: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Top-k masks and consensus
# --------------------------------------------------------------------------------------------

def top_k_masks(maps: Tensor, k: Sequence[float] | Tensor) -> Tensor:
    """Bool (G, M, *S): pixel in the top k % of its map, for each map (M, *S) and k (percent) of a grid.

    The threshold is the (100 − k)-th percentile of the map (numpy's linear interpolation); a
    pixel with value 0 never counts as selected.
    """
    k = torch.as_tensor(k, dtype=torch.float64).reshape(-1)
    rows = maps.flatten(1)
    thr = percentile(rows, (100 - k).to(rows.device))            # (M, G)
    keep = (rows[None] >= thr.T[:, :, None]) & (rows[None] > 0)  # (G, M, P)
    return keep.view((k.numel(),) + tuple(maps.shape))


def consensus_maps(maps: Tensor, k: Sequence[float] | Tensor, consensus: str = "gated_mean") -> Tensor:
    """Consensus (G, N, *S) of component maps (I, N, *S) in [0, 1] for each k of a grid (percent).

    Accumulated one component at a time, so memory is O(G · N · P), not O(G · I · N · P).
    """
    _check_choice(consensus, CONSENSUS, "consensus")
    n_comp = maps.shape[0]
    total = None
    for c in maps:  # loop over the (few) components; all images and k values at once
        chosen = top_k_masks(c, k)                               # (G, N, *S)
        term = chosen * c if consensus == "gated_mean" else chosen.to(c.dtype)
        total = term if total is None else total + term
    if consensus == "vote":
        total = total + VOTE_TIE_WEIGHT * maps.mean(dim=0)
    return total / n_comp


def _unit_range(maps: Tensor) -> Tensor:
    """Min-max per map (the engine's normalisation), for handing candidate maps to a metric."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values.view((-1,) + (1,) * (maps.ndim - 1))
    hi = flat.max(dim=1).values.view((-1,) + (1,) * (maps.ndim - 1))
    return ((maps - lo) / (hi - lo + 1e-7)).clamp(0, 1)


def _resolve_metric(metric: str, metric_params) -> tuple[dict, bool]:
    try:
        entry = METRICS.get(metric)
    except UnknownNameError as err:
        raise CamError(f"metacam: {err}") from None
    params = dict(metric_params or {})
    # MetricInputs fields a caller may pass (memory_mb, fill, ...); the rest come from the batch
    fields = set(MetricInputs.__dataclass_fields__) - {"images", "heatmaps", "targets", "model", "predictions"}
    try:
        entry.check_params({k: v for k, v in params.items() if k not in fields})
    except ValueError as err:
        raise CamError(f"metacam metric_params: {err}") from None
    needs = set(entry.meta.get("needs", ())) - {"model"}
    if needs:
        raise CamError(f"metacam: metric '{metric}' needs {sorted(needs)}, which a CAM method does not have")
    return params, bool(entry.meta.get("higher_is_better", True))


def metric_table(model: nn.Module, images: Tensor, candidates: Tensor, targets: Tensor, predictions: Tensor,
                 metric: str, metric_params: dict | None = None, memory_mb: float = 256.0) -> Tensor:
    """Metric values (G, N) of candidate maps (G, N, *S) of the same N images, all pairs at once.

    The maps are min-max normalised first (as any heatmap handed to a metric).
    """
    params, _ = _resolve_metric(metric, metric_params)
    params.setdefault("memory_mb", memory_mb)
    g, n = candidates.shape[:2]
    reps = (g,) + (1,) * (images.ndim - 1)
    values = evaluate(model, images.repeat(reps), _unit_range(candidates.flatten(0, 1)), metric,
                      targets=targets.repeat(g), predictions=predictions.repeat(g), **params)
    return values.view(g, n)


def select_k(values: Tensor, k_selection: str = "held_out", higher_is_better: bool = True) -> Tensor:
    """Index (N,) of the chosen grid entry per image from metric values (G, N); NaN = no value.

    ``same_image``: the best entry for the image itself. ``held_out``: the best mean over the other
    images of the batch (leave-one-out). Ties go to the first (smallest) entry.
    """
    _check_choice(k_selection, K_SELECTION, "k_selection")
    v = values if higher_is_better else -values
    finite = torch.isfinite(v)
    if k_selection == "same_image":
        score = v.masked_fill(~finite, -math.inf)
    else:
        vz = v.masked_fill(~finite, 0.0)
        total = vz.sum(dim=1, keepdim=True) - vz
        count = finite.sum(dim=1, keepdim=True) - finite.to(torch.long)
        score = (total / count.clamp_min(1)).masked_fill(count == 0, -math.inf)
    return score.argmax(dim=0)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

@register_method("metacam", needs_gradients=_needs_gradients, extra_layers=_extra_layers,
                 summary="MetaCAM (our reading): consensus of the top-k % pixels of several CAMs")
def metacam(x: CamInputs, components: list = DEFAULT_COMPONENTS, component_params: dict | None = None,
            consensus: str = "gated_mean", k: float | str | None = None, k_grid: list = K_GRID,
            k_selection: str = "held_out", metric: str = "road_combined",
            metric_params: dict | None = None) -> Tensor:
    """Consensus map (N, *S) at input resolution of the top-k % pixels of ``components``.

    Parameters (all our reading, methods.md §2.11): ``components`` registered method names (default:
    the ten of the paper's eleven CAMs that cambench has; FullGrad is not implemented);
    ``component_params`` name -> parameters of a component; ``consensus`` 'gated_mean' or 'vote';
    ``k`` the top-k percentage in (0, 100] (None: 10, written so because the registry judges a
    parameter's type by its default and k may also be a string), or 'adaptive': per image, the k
    of ``k_grid`` whose
    consensus map maximises ``metric`` (a registered metric, default 'road_combined', with
    ``metric_params``; its memory_mb defaults to the engine's budget), minimising it where the
    metric's lower values are better. The metric reads the model on ``x.images`` (the model
    inputs) with the batch's target classes; all (image, k) pairs go through it in one call.
    ``k_selection``: 'held_out' (default) picks, for each image, the k with the best mean metric
    over the OTHER images of the batch (leave-one-out, so the image's own score never chooses its
    k; a batch of one image falls back to 'same_image' with a warning); 'same_image' picks the best
    k for the image itself, which is optimistic when that image is then scored with the same metric.
    """
    spec = _component_spec(components, component_params)
    _check_choice(consensus, CONSENSUS, "consensus")
    maps = torch.stack([x.method_map(name, **p) for name, p in spec])       # (I, N, *S)
    if k != "adaptive":
        return consensus_maps(maps, [DEFAULT_K if k is None else _check_k(k)], consensus)[0]
    if isinstance(k_grid, (str, bytes)) or not isinstance(k_grid, Sequence) or not k_grid:
        raise CamError(f"metacam: k_grid must be a non-empty list of percentages, got {k_grid!r}")
    grid = [_check_k(v, "k_grid entries") for v in k_grid]
    _check_choice(k_selection, K_SELECTION, "k_selection")
    _, higher = _resolve_metric(metric, metric_params)
    if x.targets is None:
        raise CamError("metacam: adaptive k scores maps with a metric, which needs class targets, not a callable")
    if k_selection == "held_out" and x.n == 1:
        warnings.warn("metacam: k_selection 'held_out' has no other image in a batch of one; "
                      "using 'same_image' for it", stacklevel=2)
        k_selection = "same_image"
    candidates = consensus_maps(maps, grid, consensus)                    # (G, N, *S)
    budget_mb = max(1, x.rows_per_chunk(2**20))  # the engine's memory budget in MiB
    values = metric_table(x.model, x.images, candidates, x.targets, x.logits.argmax(dim=1), metric,
                          metric_params, budget_mb)
    chosen = select_k(values, k_selection, higher)
    return candidates[chosen, torch.arange(x.n, device=chosen.device)]


# --------------------------------------------------------------------------------------------
# Ensemble sweeps and the Cumulative Residual Effect
# --------------------------------------------------------------------------------------------

def ensemble_sweep(model: nn.Module, images: Tensor, target_layer: nn.Module | str,
                   components: Sequence[str] = DEFAULT_COMPONENTS, targets: Targets = None,
                   component_params: dict | None = None, consensus: str = "gated_mean", k: float = 10.0,
                   metric: str = "road_combined", metric_params: dict | None = None,
                   batch_size: int | None = None, memory_mb: float = 1024.0) -> dict[frozenset, float]:
    """Mean metric over the batch of the MetaCAM map of every non-empty subset of ``components``.

    The component maps come from one :func:`cambench.explain_many` call; the consensus of every
    subset is a matrix product of the subset indicator (2^I − 1, I) with the per-component gated
    maps, and all (subset, image) pairs go through the metric in chunks sized by ``memory_mb``.
    ``k`` is fixed (no adaptive k here). Means skip images where the metric does not apply.
    Returns ``{frozenset(subset names): mean value}``.
    """
    spec = _component_spec(components, component_params)
    _check_choice(consensus, CONSENSUS, "consensus")
    k = _check_k(k)
    _resolve_metric(metric, metric_params)
    result = explain_many(model, images, {name: p for name, p in spec}, target_layer, targets, batch_size, memory_mb)
    if (result.targets < 0).any():
        raise CamError("ensemble_sweep scores maps with a metric, which needs class targets, not a callable")
    names = [name for name, _ in spec]
    maps = torch.stack([result.maps[name] for name in names])             # (I, N, *S)
    n_comp, n = maps.shape[:2]
    chosen = top_k_masks(maps.flatten(0, 1), [k])[0].view(n_comp, -1).to(maps.dtype)  # (I, N·P)
    subsets = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n_comp))[1:], dtype=maps.dtype,
                           device=maps.device)                            # (2^I − 1, I), non-empty
    size = subsets.sum(dim=1, keepdim=True)
    gated, flat = chosen * maps.flatten(1), maps.flatten(1)
    # per subset: the batch's images repeated once, plus a few copies of its maps
    per_subset = images.numel() * images.element_size() + 4 * flat.shape[1] * flat.element_size()
    step = max(1, int(memory_mb * 2**20 // per_subset))
    means = []
    for start in range(0, subsets.shape[0], step):  # chunks of subsets, every image at once
        sub, sz = subsets[start:start + step], size[start:start + step]
        if consensus == "gated_mean":
            combined = sub @ gated / sz
        else:
            combined = (sub @ chosen + VOTE_TIE_WEIGHT * (sub @ flat) / sz) / sz
        values = metric_table(model, images, combined.view((-1, n) + tuple(maps.shape[2:])), result.targets,
                              result.predictions, metric, metric_params, memory_mb)
        means.append(values.nanmean(dim=1))
    means = torch.cat(means).tolist()
    return {frozenset(n_ for n_, on in zip(names, row) if on): v
            for row, v in zip(subsets.bool().tolist(), means)}


def cumulative_residual_effect(scores: Mapping[frozenset, float], components: Sequence[str],
                               mode: str = "residual") -> dict[str, float]:
    """CRE per component from a table of ensemble scores (methods.md §2.11, our reading).

    ``residual``: ``CRE_m = Σ_s RE_m(s)``, ``RE_m(s)`` = mean score of the size-s subsets with m
    minus that of the size-s subsets without m, over the sizes where both exist (s < number of
    components). ``marginal``: the plain average of ``score(S ∪ {m}) − score(S)`` over the
    non-empty subsets S of the other components (NaN with a single component). Every non-empty
    subset of ``components`` must be in ``scores``.
    """
    if mode not in CRE_MODES:
        raise ValueError(f"cumulative_residual_effect: mode must be one of {CRE_MODES}, got {mode!r}")
    names = list(dict.fromkeys(components))
    if not names:
        raise ValueError("cumulative_residual_effect: no components")
    table = {frozenset(s): float(v) for s, v in scores.items()}
    subsets = [frozenset(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
    missing = [sorted(s) for s in subsets if s not in table]
    if missing:
        raise ValueError(f"cumulative_residual_effect: scores lack {len(missing)} subset(s), e.g. {missing[0]}")
    out = {}
    for m in names:
        if mode == "residual":
            total = 0.0
            for s in range(1, len(names)):
                with_m = [table[x] for x in subsets if len(x) == s and m in x]
                without = [table[x] for x in subsets if len(x) == s and m not in x]
                total += sum(with_m) / len(with_m) - sum(without) / len(without)
            out[m] = total
        else:
            gains = [table[x | {m}] - table[x] for x in subsets if m not in x]
            out[m] = sum(gains) / len(gains) if gains else math.nan
    return out
