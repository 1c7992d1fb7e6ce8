"""SyCAM's terminals and the evaluation of expressions on them (docs/methods.md §2.14, our reading)."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ..engine import METHODS, CamError, CamInputs
from .grammar import TERMINALS, Const, Expr, Terminal, Unary, resolve_expression

SAFE_DIV_EPS = 1e-12   # |denominator| below this: the quotient is 0 (our reading of "safe ÷")


class TerminalSet:
    """Per-channel terminals (N, K) of one batch, computed on first use and cached.

    Score and Ablation terminals reuse the registered ``scorecam`` (default ``pgc`` variant: softmax
    over the channels' masked-input scores) and ``ablationcam`` functions; ``chunk_size`` is their
    number of model evaluations per chunk (0: from the memory budget).
    """

    def __init__(self, x: CamInputs, chunk_size: int = 0):
        self.x, self.chunk_size = x, chunk_size
        self.cache: dict[str, Tensor] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x.activations.shape[:2])

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.cache:
            self.cache[name] = self._compute(name)
        return self.cache[name]

    def _compute(self, name: str) -> Tensor:
        x = self.x
        if name not in TERMINALS:
            raise CamError(f"unknown terminal {name!r}; terminals: {', '.join(TERMINALS)}")
        if TERMINALS[name][0] and x.gradients is None:
            raise CamError(f"terminal '{name}' needs gradients, which were not captured for this batch")
        if name in ("gradcam", "gradcampp", "xgradcam"):
            out = METHODS.get(name).fn(x)
        elif name == "relu_grad":
            out = x.gradients.clamp_min(0).mean(dim=x.spatial_dims)
        elif name == "act_mean":
            out = x.activations.mean(dim=x.spatial_dims)
        elif name == "score":
            out = METHODS.get("scorecam").fn(x, chunk_size=self.chunk_size)
        else:
            out = METHODS.get("ablationcam").fn(x, chunk_size=self.chunk_size)
        return out.detach().to(x.activations.dtype)


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where |den| < 1e-12 or the quotient is not finite (never NaN or inf)."""
    small = den.abs() < SAFE_DIV_EPS
    quotient = num / torch.where(small, torch.ones_like(den), den)
    return torch.where(small | ~torch.isfinite(quotient), torch.zeros_like(quotient), quotient)


def _relu(a: Tensor) -> Tensor:
    return a.clamp_min(0)


UNARY_FNS: dict[str, Callable[[Tensor], Tensor]] = {"relu": _relu, "neg": torch.neg}
BINARY_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "+": torch.add, "-": torch.sub, "*": torch.mul, "/": safe_div, "max": torch.maximum, "min": torch.minimum}


def evaluate_tree(e: Expr, get: Callable[[str], Tensor], like: Tensor) -> Tensor:
    if isinstance(e, Terminal):
        return get(e.name)
    if isinstance(e, Const):
        return like.new_tensor(e.value)
    if isinstance(e, Unary):
        return UNARY_FNS[e.op](evaluate_tree(e.arg, get, like))
    return BINARY_FNS[e.op](evaluate_tree(e.left, get, like), evaluate_tree(e.right, get, like))


def evaluate_expression(expr: Expr | str, terminals: TerminalSet | Mapping[str, Tensor]) -> Tensor:
    """Channel weights (N, K) of an expression; constants broadcast to every image and channel."""
    expr = resolve_expression(expr)
    names = sorted(expr.terminals())
    if isinstance(terminals, TerminalSet):
        like = terminals.x.activations.new_zeros(terminals.shape)
    else:
        missing = [n for n in names if n not in terminals]
        if missing:
            raise CamError(f"terminal(s) {missing} not available; have {sorted(terminals)}")
        like = torch.zeros_like(next(iter(terminals.values())))
    out = evaluate_tree(expr, lambda name: terminals[name], like)
    return torch.broadcast_to(out, like.shape).clone()
