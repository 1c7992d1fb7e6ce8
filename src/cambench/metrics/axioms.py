"""XGrad-CAM's axioms as measurable residuals (Fu et al., BMVC 2020; docs/metrics.md §6).

On the un-normalised, pre-ReLU map at feature resolution ``M = sum_k w_k A^k`` and the target
logit ``S`` (the score the gradients are taken of):

- **conservation**: ``|S - sum_ij M_ij| / |S|`` (lower is better; 0 when the map redistributes
  exactly the score). Defined for every method from its signed map.
- **sensitivity**: zeroing channel k lowers the score by ``dS_k = S - S(A with A^k = 0)``; the axiom
  predicts ``dS_k = w_k * sum_ij A^k_ij``. ``sensitivity_residual`` is
  ``mean_k |dS_k - w_k S_k| / |S|`` (lower is better) and ``sensitivity_correlation`` the Pearson
  correlation over k of the two (higher is better). Only methods that return channel weights have
  a ``w_k`` (Grad-CAM, Grad-CAM++, XGrad-CAM, Score-CAM, Ablation-CAM, CAM, ...); for methods that
  return a map directly the sensitivity metrics do not apply and produce no rows.

The axioms are the paper's; these measurable forms are our reading (its statistics are unknown).
The signed maps, target logits and channel weights are read from the heatmap file when the
caller passes them (``raw``, ``scores``, ``weights``; the workflow does), else the method is re-run.
``dS_k`` and ``S_k`` depend on the model and images only, so they are computed once per image set
and shared by every method (``TableContext.cache``); ``dS_k`` replays only the part of the model
after the target layer, for all (image, channel) rows in chunks.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..engine import capture, method_terms
from ..methods.perturbation import ablated_scores
from ..utils import eval_mode
from .base import MetricInputs, register_metric, table_cached
from .similarities import pearson

_SCORE_EPS = 1e-12


def _terms(x: MetricInputs) -> tuple[Tensor, Tensor | None, Tensor]:
    """(target logits S (N,), channel weights (N, K) or None, signed maps (N, *s)): as stored in the
    heatmap file when given (``raw``, ``scores``, ``weights``), else recomputed by the engine."""
    if x.raw is not None and x.scores is not None:
        return x.scores.double(), None if x.weights is None else x.weights.double(), x.raw.double()
    ctx = x.context
    if ctx.method is None or ctx.target_layer is None:
        raise ValueError("axiom metrics need method, method_params and target_layer (or raw and scores)")
    net = ctx.original_model
    scores, weights, signed = [], [], []
    for i in range(0, x.images.shape[0], ctx.batch_size):
        inputs, w, m = method_terms(net, x.images[i:i + ctx.batch_size], ctx.method, ctx.method_params,
                                    ctx.target_layer, x.targets[i:i + ctx.batch_size], ctx.memory_mb)
        scores.append(inputs.scores.double())
        weights.append(w)
        signed.append(m.double())
    w = None if any(v is None for v in weights) else torch.cat(weights).double()
    return torch.cat(scores), w, torch.cat(signed)


def channel_terms(x: MetricInputs) -> tuple[Tensor, Tensor]:
    """(dS (N, K), S_k (N, K)): the target logit minus the logit with channel k of the target layer
    set to 0, and the channel sums of the activations. Method-free: computed once per image set."""
    ctx = x.context
    if ctx.target_layer is None:
        raise ValueError("the sensitivity axiom needs target_layer")
    net = ctx.original_model

    def compute() -> tuple[Tensor, Tensor]:
        drops, sums = [], []
        for i in range(0, x.images.shape[0], ctx.batch_size):
            with eval_mode(net):
                inputs = capture(net, x.images[i:i + ctx.batch_size], ctx.target_layer,
                                 x.targets[i:i + ctx.batch_size], need_gradients=False, memory_mb=ctx.memory_mb)
                zeros = inputs.activations.new_zeros(inputs.activations.shape[0])
                drops.append(inputs.scores.double()[:, None] - ablated_scores(inputs, zeros).double())
                sums.append(inputs.activations.flatten(2).double().sum(dim=2))
        return torch.cat(drops), torch.cat(sums)

    return table_cached(x, ("channel_terms", ctx.target_layer), (x.images, net), compute, equal=(x.targets,))


@register_metric("conservation_residual", needs=("model", "method"), higher_is_better=False, family="axioms",
                 score="logit", cost={},  # reads the stored signed map and score (cambench.plan)
                 our_reading="the residual measured, |S − ΣM| / |S| (the axiom is XGrad-CAM's)",
                 summary="|logit - sum of the signed map| / |logit| (XGrad-CAM conservation)")
def conservation_residual(x: MetricInputs) -> Tensor:
    scores, _, signed = _terms(x)
    return ((scores - signed.flatten(1).sum(dim=1)).abs() / scores.abs().clamp_min(_SCORE_EPS)).float()


def _channel_terms_cost(p: dict, layer: dict) -> dict:
    """channel_terms, once per table: a forward and a replay after the target layer per channel (cambench.plan)."""
    return {"forward": 1, "head": layer["channels"], "per": "table", "once": "channel_terms"}


def _sensitivity(x: MetricInputs, value) -> tuple[Tensor, Tensor]:
    """``value(dS, w_k S_k, S)`` per image where the method has channel weights; applies nowhere else."""
    scores, weights, _ = _terms(x)
    n, device = x.images.shape[0], x.images.device
    if weights is None:
        return torch.zeros(n, device=device), torch.zeros(n, dtype=torch.bool, device=device)
    drops, sums = channel_terms(x)
    return value(drops, weights * sums, scores).float(), torch.ones(n, dtype=torch.bool, device=device)


@register_metric("sensitivity_residual", needs=("model", "method"), higher_is_better=False, family="axioms",
                 score="logit", cost=_channel_terms_cost, channel_weights=True,  # rows: those methods only
                 our_reading="the residual measured, mean_k |ΔS_k − w_k S_k| / |S| (the axiom is XGrad-CAM's)",
                 summary="mean_k |dS_k - w_k S_k| / |logit| (XGrad-CAM sensitivity); channel-weight methods only")
def sensitivity_residual(x: MetricInputs) -> tuple[Tensor, Tensor]:
    return _sensitivity(x, lambda drops, predicted, scores:
                        (drops - predicted).abs().mean(dim=1) / scores.abs().clamp_min(_SCORE_EPS))


@register_metric("sensitivity_correlation", needs=("model", "method"), higher_is_better=True, family="axioms",
                 score="logit", cost=_channel_terms_cost, channel_weights=True,  # rows: those methods only
                 our_reading="Pearson over channels of ΔS_k and w_k S_k as XGrad-CAM's sensitivity",
                 summary="Pearson correlation over channels of dS_k and w_k S_k; channel-weight methods only")
def sensitivity_correlation(x: MetricInputs) -> tuple[Tensor, Tensor]:
    return _sensitivity(x, lambda drops, predicted, _: pearson(drops, predicted))
