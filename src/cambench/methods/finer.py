"""Finer-CAM: explain what separates the target class from its most similar classes (docs/methods.md §2.10).

The target score y^c is replaced by a contrast with reference classes d_t (the classes whose
logits are closest to y^c) and any registered CAM is run on that target: gradient methods get
the gradient of the new target from the same forward (``CamInputs.gradient_of``), perturbation
methods evaluate the new target on their masked inputs (``CamInputs.target``).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..engine import METHODS, CamError, CamInputs, register_method, scaling_of
from ..registry import UnknownNameError

FINER_WEIGHTINGS = ("repo", "uniform")
FINER_DENOMINATOR_EPS = 1e-9  # the repository's epsilon in FinerWeightedTarget


def _base_entry(base, base_params):
    if not isinstance(base, str) or base == "finercam":
        raise CamError(f"finercam 'base' must be the name of another registered CAM method, got {base!r}")
    try:
        entry = METHODS.get(base)
    except UnknownNameError as err:
        raise CamError(f"finercam 'base': {err}") from None
    if base_params is not None and not isinstance(base_params, dict):
        raise CamError(f"finercam 'base_params' must be a dict of parameters for '{base}' or None, "
                       f"got {type(base_params).__name__}")
    params = dict(base_params or {})
    try:
        entry.check_params(params, where="finercam base_params")
    except ValueError as err:
        raise CamError(str(err)) from None
    return entry, params


def _base_needs_gradients(params: dict) -> bool:
    """needs_gradients of finercam = that of its base (with the base's own parameters)."""
    entry, base_params = _base_entry(params.get("base", "gradcam"), params.get("base_params"))
    return bool(entry.declared("needs_gradients", base_params, True))


def reads_target(entry, params: dict) -> bool:
    """Whether a method's map depends on the target score (its registration's ``reads_target``,
    True or a function of the parameters; undeclared: assumed True)."""
    return bool(entry.declared("reads_target", params, True))


def _cost(params: dict, layer: dict) -> dict:
    """Model work per image (cambench.plan): the base once per contrast target (repo: one, uniform:
    one per reference class), each with a backward of that target through the shared graph."""
    from ..plan import method_work  # the base's own declaration; the planner imports this module
    entry, base_params = _base_entry(params["base"], params.get("base_params"))
    references = [r for r in params["reference_ranks"] if r < layer["classes"]]
    contrast = params["alpha"] != 0 and bool(references)
    runs = len(references) if contrast and params["weighting"] == "uniform" else 1
    base = method_work(params["base"], base_params, layer)
    backward = int(contrast and bool(entry.declared("needs_gradients", base_params, True)))
    return {"forward": runs * base.forward, "head": runs * base.head, "backward": runs * (base.backward + backward)}


def _check_finercam(params: dict) -> None:
    """Before any job: the base exists, takes its base_params, and reads the target (a base that
    does not -- CAM, Eigen-CAM, MI-CAM, Score-CAM 'official', MetaCAM -- would silently give the plain base)."""
    base = params.get("base", "gradcam")
    entry, base_params = _base_entry(base, params.get("base_params"))
    if not reads_target(entry, base_params):
        given = f" with base_params {base_params}" if base_params else ""
        raise CamError(f"finercam cannot use base '{base}'{given}: its map does not read the target score "
                       "(class-agnostic, or it reads only the class index), so Finer-CAM would return the "
                       "plain base; choose a base that reads the target, e.g. gradcam, layercam, scorecam")
    if entry.meta.get("extra_layers") is not None:
        raise CamError(f"finercam cannot use base '{base}': it reads other layers' gradients, which "
                       "are only available for the original target")


def reference_classes(logits: Tensor, targets: Tensor, ranks) -> Tensor:
    """Reference classes (N, T) per image: ranks of the classes sorted by |y^j - y^c|, ascending.

    The target class itself is pinned to rank 0 (it is there anyway unless another class has
    exactly the same logit). Ranks >= n_classes are dropped, so T may be smaller than len(ranks).
    """
    n_classes = logits.shape[1]
    ranks = [r for r in ranks if r < n_classes]
    distance = (logits - logits.gather(1, targets[:, None])).abs()
    distance = distance.scatter(1, targets[:, None], -1.0)
    order = distance.argsort(dim=1, stable=True)
    return order[:, torch.as_tensor(ranks, dtype=torch.long, device=logits.device)]


def finer_target(targets: Tensor, references: Tensor, alpha: float) -> Callable[[Tensor, Tensor], Tensor]:
    """The repository's scalar target, batched: sum_t p^{d_t} (y^c - alpha y^{d_t}) / (sum_t p^{d_t} + 1e-9).

    ``p = softmax(y)`` is not detached: gradients also flow through the weights, as in the code.
    """
    def target(logits: Tensor, rows: Tensor) -> Tensor:
        refs = references[rows]                                       # (M, T)
        y_c = logits.gather(1, targets[rows, None])                   # (M, 1)
        y_d = logits.gather(1, refs)                                  # (M, T)
        p_d = logits.softmax(dim=1).gather(1, refs)
        return (p_d * (y_c - alpha * y_d)).sum(dim=1) / (p_d.sum(dim=1) + FINER_DENOMINATOR_EPS)
    return target


def difference_target(targets: Tensor, reference: Tensor, alpha: float) -> Callable[[Tensor, Tensor], Tensor]:
    """y^c - alpha y^d for one reference class d per image (``reference`` (N,))."""
    def target(logits: Tensor, rows: Tensor) -> Tensor:
        y_c = logits.gather(1, targets[rows, None]).squeeze(1)
        y_d = logits.gather(1, reference[rows, None]).squeeze(1)
        return y_c - alpha * y_d
    return target


def _retargeted(x: CamInputs, target_fn, with_gradients: bool) -> CamInputs:
    rows = torch.arange(x.n, device=x.logits.device)
    scores = target_fn(x.logits, rows).detach()
    gradients = x.gradient_of(target_fn) if with_gradients else None
    return dataclasses.replace(x, target_fn=target_fn, scores=scores, gradients=gradients)


@register_method("finercam", bounds={"alpha": "[0, inf)", "reference_ranks": "each int [1, inf)",
                                     "weighting": FINER_WEIGHTINGS},
                 needs_gradients=_base_needs_gradients, check_params=_check_finercam, reads_target=True,
                 cost=_cost, channel_weights=lambda p: bool(METHODS.get(p["base"]).declared(
                     "channel_weights", p.get("base_params") or {}, False)),
                 scaling=lambda p: scaling_of(METHODS.get(p["base"]), p.get("base_params") or {}),  # the base's
                 our_reading="weighting 'uniform' (the default, 'repo', is the authors' code)",
                 summary="Finer-CAM: a base CAM of the target's contrast with its most similar classes")
def finercam(x: CamInputs, base: str = "gradcam", alpha: float = 1.0, reference_ranks: list = (1, 2, 3),
             weighting: str = "repo", base_params: dict | None = None) -> Tensor:
    """Run ``base`` on a target that contrasts class c with the reference classes d_1..d_T.

    References [checked-code]: per image, classes sorted by |y^j - y^c| ascending, the ones at
    ``reference_ranks`` (rank 0 is c; ranks beyond the number of classes are ignored; with no
    valid reference the target is plain y^c). c is the engine's target class; a callable target
    is refused because the references need a class.

    ``weighting``:
      - ``repo`` [checked-code]: one scalar target
        s = sum_t p^{d_t} (y^c - alpha y^{d_t}) / (sum_t p^{d_t} + 1e-9), p = softmax(y) not detached.
      - ``uniform`` [our reading]: the base's signed output (channel weights or map) for each
        target y^c - alpha y^{d_t}, averaged over t before the engine's ReLU (T runs of the base).

    ``alpha`` = 0 runs the base on the plain target y^c: exactly the base CAM (the repository's
    "Baseline" mode). ``base_params`` are the base's own parameters. The base's registered function
    receives a copy of the inputs with the new target (``target_fn``, ``scores`` and, for gradient
    bases, ``gradients``). Bases that read none of these (registered with ``reads_target`` False:
    CAM, Eigen-CAM, MI-CAM, Score-CAM 'official', MetaCAM) and bases with extra hooked layers are
    refused when the parameters are checked, before any job.
    """
    entry, params = _base_entry(base, base_params)
    if weighting not in FINER_WEIGHTINGS:
        raise CamError(f"finercam 'weighting' must be one of {FINER_WEIGHTINGS}, got {weighting!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise CamError(f"finercam 'alpha' must be a finite number, got {alpha!r}")
    if isinstance(reference_ranks, (str, bytes)) or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in reference_ranks):
        raise CamError(f"finercam 'reference_ranks' must be a list of integers >= 1 (rank 0 is the "
                       f"target class itself), got {reference_ranks!r}")
    _check_finercam({"base": base, "base_params": base_params})
    if x.targets is None:
        raise CamError("Finer-CAM needs class targets: the reference classes are chosen relative to "
                       "the target class, so a callable target cannot be used")
    with_gradients = bool(entry.declared("needs_gradients", params, True))
    if alpha == 0:
        return entry.fn(x, **params)

    references = reference_classes(x.logits, x.targets, reference_ranks)   # (N, T)
    if references.shape[1] == 0:                                           # no valid reference: y^c
        return entry.fn(x, **params)
    if weighting == "repo":
        return entry.fn(_retargeted(x, finer_target(x.targets, references, float(alpha)), with_gradients),
                        **params)
    outputs = [entry.fn(_retargeted(x, difference_target(x.targets, references[:, t], float(alpha)),
                                    with_gradients), **params)
               for t in range(references.shape[1])]
    return torch.stack(outputs).mean(dim=0)
