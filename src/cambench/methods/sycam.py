"""SyCAM: channel weights from a synthesised expression over CAM terminals (docs/methods.md §2.14).

The grammar, the evaluator and the search live in :mod:`cambench.sycam`; this module only
registers the method. Everything here is [our-reading] (the paper's code is not public).
"""
from __future__ import annotations

from torch import Tensor

from ..engine import CamError, CamInputs, register_method
from ..sycam import TERMINALS, TerminalSet, evaluate_expression, resolve_expression, uses_gradients

DEFAULT_EXPRESSION = "gradcam"


def _needs_gradients(params: dict) -> bool:
    """Only expressions with a gradient terminal (gradcam, gradcampp, xgradcam, relu_grad) need a backward."""
    return uses_gradients(resolve_expression(params.get("expression", DEFAULT_EXPRESSION)))


def _reads_target(params: dict) -> bool:
    """Every terminal but act_mean reads the target (its gradients, masked or ablated scores)."""
    try:
        expr = resolve_expression(params.get("expression", DEFAULT_EXPRESSION))
    except (CamError, OSError):
        return True  # e.g. the workflow's 'search' placeholder: judged once the expression exists
    return any(t != "act_mean" for t in expr.terminals())


def _cost(params: dict, layer: dict) -> dict:
    """Model work per image (cambench.plan): the score terminal is Score-CAM's forward per channel,
    ablation Ablation-CAM's replay per channel; the others read the shared pass."""
    try:
        terminals = set(resolve_expression(params["expression"]).terminals())
    except (CamError, OSError):  # a file not written yet: any terminal may appear
        terminals = set(TERMINALS)
    return {"forward": layer["channels"] * ("score" in terminals),
            "head": layer["channels"] * ("ablation" in terminals)}


@register_method("sycam", bounds={"chunk_size": "int [0, inf)"},
                 needs_gradients=_needs_gradients, reads_target=_reads_target, cost=_cost, channel_weights=True,
                 summary="SyCAM: channel weights from a (synthesised) expression over CAM terminals")
def sycam(x: CamInputs, expression: str = DEFAULT_EXPRESSION, chunk_size: int = 0) -> Tensor:
    """Weights w = e(terminals) (N, K) for the grammar expression ``expression`` [our-reading].

    ``expression`` is grammar text such as ``"relu(gradcam) * act_mean + 0.5"`` (see
    :mod:`cambench.sycam`), or ``"file:<path>"`` naming a file written by
    :func:`cambench.sycam.write_expression` (e.g. the search's winner). Only the terminals the
    expression uses are computed; ``score`` and ``ablation`` cost about K model evaluations,
    chunked by ``chunk_size`` (0: from the memory budget). The default ``"gradcam"`` reproduces
    Grad-CAM exactly.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 0:
        raise CamError(f"sycam 'chunk_size' must be an integer >= 0, got {chunk_size!r}")
    expr = resolve_expression(expression)
    return evaluate_expression(expr, TerminalSet(x, chunk_size))
