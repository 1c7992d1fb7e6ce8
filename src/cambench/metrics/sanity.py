"""Model-parameter randomisation sanity check (Adebayo et al., NeurIPS 2018; docs/metrics.md §11).

Cascading randomisation: starting at the logits and moving toward the input, re-initialise each
layer that has parameters, keeping the earlier randomisations, and explain the same images for the
same classes at the same target layer with the randomised copy. A method that depends on the
model gives maps that stop resembling the original ones; a model-independent "explanation" keeps
similarity 1 (the negative control). The value per image is the similarity between the original
map and the map after randomising ``depth`` layers (0 = every layer in ``scope``), so lower means
more sensitive to the parameters, the desired behaviour.

Layers are the modules that own parameters directly, in registration order, which is the forward
order for the sequential models of the zoo; their parameters are re-drawn by the module's own
``reset_parameters()`` (what Quantus's MPRT calls) from a generator seeded with ``seed``, and
batch-norm running statistics are reset with them. ``scope``: ``all`` (the full cascade),
``above`` (only the layers after the target layer, which changes the gradients and weights the
CAM uses but not its activations) or ``below`` (the target layer and everything before it; the
head stays trained). Cascading and the similarity (``spearman_abs`` by default, as Quantus; also
``ssim``, ``pearson``, ``spearman``, ``cosine``, ``topk_iou``) follow the paper and Quantus; the
scopes are our reading of the CAM-specific note in docs/metrics.md §11.

A constant map (no spread: all zeros after the engine's min-max, flag bit 1 in the heatmap file), either
the original or the randomised one, has no rank order to compare: its Spearman/Pearson similarity would be
0, a perfect "pass" that says nothing about the method. Such images are excluded (the metric does not
apply there, so the tidy table has no row for them, as Quantus's NaN Spearman is dropped) and counted in a
warning per method.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from ..engine import resolve_layer
from .base import MetricInputs, explained_batches, per_method_values, register_metric, table_cached
from .similarities import SIMILARITIES
from .similarities import similarity as map_similarity

SCOPES = ("all", "above", "below")
log = logging.getLogger(__name__)


def _constant(maps: Tensor) -> Tensor:
    """(N,) bool: maps without spread (the engine stores a constant map as zeros)."""
    flat = maps.flatten(1)
    return flat.amax(dim=1) == flat.amin(dim=1)


def parametrised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module owning parameters itself and able to reset them, in order."""
    return [(name, m) for name, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and hasattr(m, "reset_parameters")]


def cascade_order(model: nn.Module, target_layer: str, scope: str) -> list[str]:
    """Names of the layers to randomise, top (logits) first."""
    if scope not in SCOPES:
        raise ValueError(f"mprt: scope must be one of {list(SCOPES)}, got {scope!r}")
    names = [name for name, _ in parametrised_layers(model)]
    if not names:
        raise ValueError("mprt: the model has no layer with parameters to randomise")
    target = resolve_layer(model, target_layer)          # dotted names with negative indices too
    modules = dict(model.named_modules())
    target_modules = {id(m) for m in target.modules()}
    position = {name: i for i, name in enumerate(names)}
    inside = [n for n in names if id(modules[n]) in target_modules]
    last_below = max((position[n] for n in inside), default=-1)
    if last_below < 0:  # target layer without parameters (e.g. an activation): use registration order
        order = list(modules)
        cut = next(i for i, (_, m) in enumerate(modules.items()) if m is target)
        last_below = max((position[n] for n in names if order.index(n) <= cut), default=-1)
    chosen = {"all": names, "above": names[last_below + 1:], "below": names[:last_below + 1]}[scope]
    if not chosen:
        raise ValueError(f"mprt: no layer with parameters {scope} the target layer '{target_layer}'")
    return chosen[::-1]


def randomised_copy(model: nn.Module, layers: list[str], seed: int) -> nn.Module:
    """A deep copy with ``layers`` re-initialised (deterministic in ``seed``); the model is untouched."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    devices = [p.device for p in clone.parameters()][:1]
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(seed)
        for name in layers:
            modules[name].reset_parameters()
    return clone


@register_metric("mprt", bounds={"depth": "int [0, inf)", "scope": SCOPES, "similarity": tuple(SIMILARITIES),
                         "top_percent": "(0, 100]"},
                 needs=("model", "method"), higher_is_better=False, family="sanity",
                 # one engine pass of every method of the table on the randomised copy (cambench.plan)
                 cost=lambda p, layer: {"explain": 1, "per": "table", "once": ("mprt", repr(sorted(p.items())))},
                 summary="similarity of the heatmap to the one of a cascade-randomised model "
                         "(lower = passes the sanity check)")
def mprt(x: MetricInputs, depth: int = 0, scope: str = "all", similarity: str = "spearman_abs",
         top_percent: float = 20.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    x.require("method", metric="mprt")
    if depth < 0:
        raise ValueError(f"mprt: depth must be >= 0 (0 = every layer), got {depth}")
    net = x.context.original_model
    order = cascade_order(net, x.context.target_layer, scope)
    layers = order[:depth] if depth else order
    randomised = table_cached(x, ("mprt_model", tuple(layers), seed), (net,),
                              lambda: randomised_copy(net, layers, seed).eval())
    n, dev = x.images.shape[0], x.images.device

    def compute(methods: dict[str, dict], heatmaps: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        out = {m: torch.empty(n, device=dev) for m in methods}
        applies = {m: torch.empty(n, dtype=torch.bool, device=dev) for m in methods}
        for rows, maps in explained_batches(x, methods, x.images, model=randomised):
            for m, explained in maps.items():
                original = heatmaps[m][rows].to(dev).float()
                out[m][rows] = map_similarity(similarity, original, explained, "mprt", top_percent).float()
                applies[m][rows] = ~(_constant(original) | _constant(explained))
        for m, ok in applies.items():
            if not ok.all():
                log.warning("mprt: %d of %d maps of method '%s' are constant before or after randomisation: "
                            "excluded (no similarity to compare)", int((~ok).sum()), n, m)
        return {m: (out[m].masked_fill(~applies[m], 0.0), applies[m]) for m in methods}

    return per_method_values(x, ("mprt", tuple(layers), seed, similarity, top_percent), compute)
