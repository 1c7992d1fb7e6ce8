"""MetaCAM (Kaczmarek et al., arXiv 2307.16863; docs/methods.md §2.11): consensus of the top-k % pixels.

Only the abstract is published; everything here is **our reading** of it (docs/methods.md §6):

* components: the CAMs pytorch-grad-cam offered in mid-2023. FullGrad is not implemented in
  cambench (it needs the biases of every layer, not one target layer), so the default is the
  other ten, restricted to those registered;
* ``gated_mean``: ``M = (1/N) Σ_i B_i C_i`` with ``B_i`` the top-k % pixels of component map C_i;
  ``vote``: ``M = (1/N) (Σ_i B_i + ½ · mean_i C_i)``: the number of votes, ties broken by the mean
  activation (the ½ keeps the tie-breaker below one vote);
* a pixel with ``C_i = 0`` is never in component i's top set (it would only get in through ties
  at zero, e.g. for a ReLU'd map with fewer than k % positive pixels);
* adaptive k (the default, the paper's adaptive thresholding): per image, the k of ``k_grid``
  that maximises a registered metric (ROAD combined by default) of the thresholded consensus map
  of that image (``same_image``): a function of the image alone, so maps do not depend on batch
  size or composition; optimistic when the same metric then scores the map. A k held out from the
  scored images: :func:`held_out_k` on another split, passed as a fixed ``k``;
* the Cumulative Residual Effect over ensemble sweeps (:func:`cumulative_residual_effect`).

Component maps come from ``x.method_map`` (post-processed to [0, 1] at input resolution and cached
per batch), so an ensemble costs the sum of its components once.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..engine import METHODS, CamError, CamInputs, Targets, explain_many, register_method
from ..metrics import INPUT_FIELDS, METRICS, evaluate
from ..metrics.road import percentile
from ..registry import UnknownNameError, nested_params

# The pytorch-grad-cam CAMs of July 2023 (docs/methods.md §2.11) that cambench implements; FullGrad is not.
DEFAULT_COMPONENTS = ("gradcam", "hirescam", "gradcam_elementwise", "gradcampp", "xgradcam", "ablationcam",
                      "scorecam", "eigencam", "eigengradcam", "layercam")
CONSENSUS = ("gated_mean", "vote")
# 'held_out' (leave-one-out over the batch) made each image's k depend on its batch: gone, see held_out_k
K_SELECTION = ("same_image",)
CRE_MODES = ("residual", "marginal")
K_GRID = tuple(range(5, 101, 5))
DEFAULT_K = "adaptive"
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
        if METHODS.get(name).declared("needs_gradients", p, True):
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


def _cost(params: dict, layer: dict) -> dict:
    """Model work per image (cambench.plan): the components, computed once per batch and shared with
    the same methods of the table ('members'), and with adaptive k one call of the metric per k of the
    grid, which the planner counts by the metric's own declaration."""
    work: dict = {"members": _component_spec(params["components"], params["component_params"])}
    if params["k"] == "adaptive":
        metric_params = {k: v for k, v in (params["metric_params"] or {}).items() if k not in INPUT_FIELDS}
        work["metric_calls"] = [(params["metric"], metric_params, len(params["k_grid"]))]
    return work


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
    # Metric input keywords a caller may pass (memory_mb, fill, ...); the rest come from the batch
    fields = INPUT_FIELDS - {"images", "heatmaps", "targets", "model", "predictions"}
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


def select_k(values: Tensor, k_selection: str = "same_image", higher_is_better: bool = True) -> Tensor:
    """Index (N,) of the chosen grid entry per image from metric values (G, N); NaN = no value.

    ``same_image``: the best entry for the image itself, from its own column only (so a function
    of the image alone). Ties go to the first (smallest) entry.
    """
    _check_choice(k_selection, K_SELECTION, "k_selection")
    v = values if higher_is_better else -values
    return v.masked_fill(~torch.isfinite(v), -math.inf).argmax(dim=0)


# --------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------

@register_method("metacam", bounds={"consensus": CONSENSUS, "k": ("adaptive", "(0, 100]"), "k_grid": "each (0, 100]",
                         "k_selection": K_SELECTION},
                 needs_gradients=_needs_gradients, extra_layers=_extra_layers, cost=_cost,
                 raw_resolution="input",  # the consensus of post-processed maps (the heatmap file's /raw)
                 check_params=nested_params("metric_params", METRICS, "metric", "road_combined",
                                            ignore=lambda name: name in INPUT_FIELDS),
                 reads_target=False,  # components come from the session's own inputs (x.method_map)
                 our_reading="all of it: the gated-mean consensus and each image's adaptive k by ROAD",
                 summary="MetaCAM (our reading): consensus of the top-k % pixels of several CAMs")
def metacam(x: CamInputs, components: list = DEFAULT_COMPONENTS, component_params: dict | None = None,
            consensus: str = "gated_mean", k: float | str = DEFAULT_K, k_grid: list = K_GRID,
            k_selection: str = "same_image", metric: str = "road_combined",
            metric_params: dict | None = None) -> Tensor:
    """Consensus map (N, *S) at input resolution of the top-k % pixels of ``components``.

    Parameters (all our reading, docs/methods.md §2.11): ``components`` registered method names (default:
    the ten of the paper's eleven CAMs that cambench has; FullGrad is not implemented);
    ``component_params`` name -> parameters of a component; ``consensus`` 'gated_mean' or 'vote';
    ``k`` 'adaptive' (the default: the paper's adaptive thresholding) or a fixed top-k percentage
    in (0, 100]. Adaptive: per image, the k of ``k_grid`` whose consensus map maximises ``metric``
    (a registered metric, default 'road_combined', with ``metric_params``; its memory_mb defaults
    to the engine's budget), minimising it where the metric's lower values are better. The metric
    reads the model on ``x.images`` (the model inputs) with the batch's target classes; all
    (image, k) pairs go through it in one call. ``k_selection``: 'same_image' (the only choice)
    picks each image's k from that image's own scores, so the map is a function of the image
    alone, whatever the batch; it is optimistic when the image is then scored with the same
    metric. For a k held out from the scored images, run :func:`held_out_k` on another split and
    pass its result as a fixed ``k``.
    """
    spec = _component_spec(components, component_params)
    _check_choice(consensus, CONSENSUS, "consensus")
    maps = torch.stack([x.method_map(name, **p) for name, p in spec])       # (I, N, *S)
    if k != "adaptive":
        return consensus_maps(maps, [_check_k(k)], consensus)[0]
    if isinstance(k_grid, (str, bytes)) or not isinstance(k_grid, Sequence) or not k_grid:
        raise CamError(f"metacam: k_grid must be a non-empty list of percentages, got {k_grid!r}")
    grid = [_check_k(v, "k_grid entries") for v in k_grid]
    _check_choice(k_selection, K_SELECTION, "k_selection")
    _, higher = _resolve_metric(metric, metric_params)
    if x.targets is None:
        raise CamError("metacam: adaptive k scores maps with a metric, which needs class targets, not a callable")
    candidates = consensus_maps(maps, grid, consensus)                    # (G, N, *S)
    budget_mb = max(1, x.rows_per_chunk(2**20))  # the engine's memory budget in MiB
    values = metric_table(x.model, x.images, candidates, x.targets, x.logits.argmax(dim=1), metric,
                          metric_params, budget_mb)
    chosen = select_k(values, k_selection, higher)
    return candidates[chosen, torch.arange(x.n, device=chosen.device)]


def held_out_k(model: nn.Module, images: Tensor, target_layer: nn.Module | str, targets: Targets = None,
               components: Sequence[str] = DEFAULT_COMPONENTS, component_params: dict | None = None,
               consensus: str = "gated_mean", k_grid: Sequence[float] = K_GRID, metric: str = "road_combined",
               metric_params: dict | None = None, batch_size: int | None = None,
               memory_mb: float = 1024.0) -> float:
    """The k of ``k_grid`` with the best mean ``metric`` of the MetaCAM maps over ``images``: a held-out
    set (e.g. images of the training split), so that metacam's fixed ``k`` is not chosen on the images
    it is scored on. Images where the metric does not apply are skipped."""
    spec = _component_spec(components, component_params)
    grid = [_check_k(v, "k_grid entries") for v in k_grid]
    _, higher = _resolve_metric(metric, metric_params)
    result = explain_many(model, images, {name: p for name, p in spec}, target_layer, targets, batch_size, memory_mb)
    if (result.targets < 0).any():
        raise CamError("held_out_k scores maps with a metric, which needs class targets, not a callable")
    maps = torch.stack([result.maps[name] for name, _ in spec])
    values = metric_table(model, images, consensus_maps(maps, grid, consensus), result.targets,
                          result.predictions, metric, metric_params, memory_mb).nanmean(dim=1)   # (G,)
    values = values if higher else -values
    return grid[int(values.masked_fill(~torch.isfinite(values), -math.inf).argmax())]


# --------------------------------------------------------------------------------------------
# Ensemble sweeps and the Cumulative Residual Effect
# --------------------------------------------------------------------------------------------

def ensemble_sweep(model: nn.Module, images: Tensor, target_layer: nn.Module | str,
                   components: Sequence[str] = DEFAULT_COMPONENTS, targets: Targets = None,
                   component_params: dict | None = None, consensus: str = "gated_mean", k: float | str = DEFAULT_K,
                   metric: str = "road_combined", metric_params: dict | None = None,
                   batch_size: int | None = None, memory_mb: float = 1024.0,
                   k_grid: Sequence[float] = K_GRID) -> dict[frozenset, float]:
    """Mean metric over the batch of the MetaCAM map of every non-empty subset of ``components``.

    The component maps come from one :func:`cambench.explain_many` call; the consensus of every
    subset is a matrix product of the subset indicator (2^I − 1, I) with the per-component gated
    maps, and all (subset, image) pairs go through the metric in chunks sized by ``memory_mb``.
    ``k``: 'adaptive' (as the method: per subset and image, the entry of ``k_grid`` whose consensus
    scores best on ``metric``, which is then the value that image contributes) or a fixed top-k
    percentage. Adaptive costs ``len(k_grid)`` metric evaluations per (subset, image) instead of one.
    Means skip images where the metric does not apply.
    Returns ``{frozenset(subset names): mean value}``.
    """
    spec = _component_spec(components, component_params)
    _check_choice(consensus, CONSENSUS, "consensus")
    if k == "adaptive":
        if isinstance(k_grid, (str, bytes)) or not isinstance(k_grid, Sequence) or not k_grid:
            raise CamError(f"metacam: k_grid must be a non-empty list of percentages, got {k_grid!r}")
        grid = [_check_k(v, "k_grid entries") for v in k_grid]
    else:
        grid = [_check_k(k)]
    _, higher = _resolve_metric(metric, metric_params)
    result = explain_many(model, images, {name: p for name, p in spec}, target_layer, targets, batch_size, memory_mb)
    if (result.targets < 0).any():
        raise CamError("ensemble_sweep scores maps with a metric, which needs class targets, not a callable")
    names = [name for name, _ in spec]
    maps = torch.stack([result.maps[name] for name in names])             # (I, N, *S)
    n_comp, n = maps.shape[:2]
    g = len(grid)
    chosen = top_k_masks(maps.flatten(0, 1), grid).reshape(g, n_comp, -1).to(maps.dtype)  # (G, I, N·P)
    subsets = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n_comp))[1:], dtype=maps.dtype,
                           device=maps.device)                            # (2^I − 1, I), non-empty
    size = subsets.sum(dim=1)[:, None, None]
    flat = maps.flatten(1)
    gated = chosen * flat                                                 # (G, I, N·P)
    # per subset: the batch's images repeated once per k, plus a few copies of its maps
    per_subset = g * (images.numel() * images.element_size() + 4 * flat.shape[1] * flat.element_size())
    step = max(1, int(memory_mb * 2**20 // per_subset))
    means = []
    for start in range(0, subsets.shape[0], step):  # chunks of subsets, every k and image at once
        sub, sz = subsets[start:start + step], size[start:start + step]
        if consensus == "gated_mean":
            combined = torch.einsum("si,gip->sgp", sub, gated) / sz
        else:
            combined = (torch.einsum("si,gip->sgp", sub, chosen) + VOTE_TIE_WEIGHT * (sub @ flat)[:, None] / sz) / sz
        values = metric_table(model, images, combined.view((-1, n) + tuple(maps.shape[2:])), result.targets,
                              result.predictions, metric, metric_params, memory_mb).view(-1, g, n)
        # each image's best k (first on ties, as select_k); a single k is the plain value
        oriented = values if higher else -values
        best = oriented.masked_fill(~torch.isfinite(oriented), -math.inf).argmax(dim=1, keepdim=True)
        means.append(values.gather(1, best).squeeze(1).nanmean(dim=1))
    means = torch.cat(means).tolist()
    return {frozenset(n_ for n_, on in zip(names, row) if on): v
            for row, v in zip(subsets.bool().tolist(), means)}


def cumulative_residual_effect(scores: Mapping[frozenset, float], components: Sequence[str],
                               mode: str = "residual") -> dict[str, float]:
    """CRE per component from a table of ensemble scores (docs/methods.md §2.11, our reading).

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
