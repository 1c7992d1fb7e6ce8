"""SyCAM: metric-guided synthesis of CAM channel-weight expressions (docs/methods.md §2.14).

Everything in this module is [our-reading]: the paper's code is not public. An expression over
per-channel *terminals* (each an ``(N, K)`` tensor computed batched from a :class:`CamInputs`)
defines channel weights ``w``; the engine turns them into ``ReLU(sum_k w_k A^k)`` like any other
channel-weight method (registered as ``sycam`` in ``cambench.methods.sycam``).

Grammar (infix text; the canonical form is what :func:`format_expression` prints)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | primary                 # "-e" is read as neg(e)
    primary := NUMBER | TERMINAL | FUNC "(" expr ["," expr] ")" | "(" expr ")"

Terminals: ``gradcam`` (mean G), ``gradcampp`` (Grad-CAM++ weight), ``xgradcam``, ``relu_grad``
(mean ReLU(G)), ``act_mean`` (mean A), ``score`` (Score-CAM softmax channel score), ``ablation``
(Ablation-CAM relative drop); non-negative numeric constants. Operators: ``+ - * /`` (``/`` is
safe: 0 where |denominator| < 1e-12), ``max(a, b)``, ``min(a, b)``, ``relu(a)``, ``neg(a)``.
The parser is hand-written; nothing is ever passed to ``eval``.

The search (:func:`synthesise`) enumerates expressions bottom-up by size with observational-
equivalence pruning and scores the survivors with a registered metric (§2.14 "Search").
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .engine import METHODS, CamError, CamInputs, capture, postprocess, resolve_layer
from .utils import atomic_path, eval_mode

SAFE_DIV_EPS = 1e-12   # |denominator| below this: the quotient is 0 (our reading of "safe ÷")
FILE_PREFIX = "file:"

# name -> (needs gradients, what it is); computed lazily by TerminalSet.
TERMINALS: dict[str, tuple[bool, str]] = {
    "gradcam": (True, "Grad-CAM weight: spatial mean of the gradient"),
    "gradcampp": (True, "Grad-CAM++ weight"),
    "xgradcam": (True, "XGrad-CAM weight: sum(G * A) / sum(A)"),
    "relu_grad": (True, "spatial mean of ReLU(gradient)"),
    "act_mean": (False, "spatial mean of the activation"),
    "score": (False, "Score-CAM channel score (softmax over channels; ~K forwards)"),
    "ablation": (False, "Ablation-CAM relative score drop (~K head replays)"),
}
UNARY_OPS = ("relu", "neg")
BINARY_OPS = ("+", "-", "*", "/", "max", "min")
COMMUTATIVE = frozenset({"+", "*", "max", "min"})
FUNCTIONS = {"relu": 1, "neg": 1, "max": 2, "min": 2}
DEFAULT_CONSTANTS = (0.5, 1.0, 2.0)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


# --------------------------------------------------------------------------------------------
# Expression trees
# --------------------------------------------------------------------------------------------

class Expr:
    """Base class of expression nodes; ``str(e)`` is the canonical text."""

    size: int

    def __str__(self) -> str:
        return format_expression(self)

    def terminals(self) -> set[str]:
        out: set[str] = set()
        _collect_terminals(self, out)
        return out

    @property
    def constant_only(self) -> bool:
        return not self.terminals()


@dataclass(frozen=True, eq=True, repr=False)
class Terminal(Expr):
    name: str

    def __post_init__(self):
        if self.name not in TERMINALS:
            raise CamError(f"unknown terminal {self.name!r}; terminals: {', '.join(TERMINALS)}")
        object.__setattr__(self, "size", 1)

    def __repr__(self) -> str:
        return f"Terminal({self.name!r})"


@dataclass(frozen=True, eq=True, repr=False)
class Const(Expr):
    value: float

    def __post_init__(self):
        value = float(self.value)
        if not math.isfinite(value) or value < 0:
            raise CamError(f"expression constants must be finite and >= 0 (use neg(...)), got {self.value!r}")
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "size", 1)

    def __repr__(self) -> str:
        return f"Const({self.value!r})"


@dataclass(frozen=True, eq=True, repr=False)
class Unary(Expr):
    op: str
    arg: Expr

    def __post_init__(self):
        if self.op not in UNARY_OPS:
            raise CamError(f"unknown unary operator {self.op!r}; expected one of {UNARY_OPS}")
        object.__setattr__(self, "size", 1 + self.arg.size)

    def __repr__(self) -> str:
        return f"Unary({self.op!r}, {self.arg!r})"


@dataclass(frozen=True, eq=True, repr=False)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr

    def __post_init__(self):
        if self.op not in BINARY_OPS:
            raise CamError(f"unknown binary operator {self.op!r}; expected one of {BINARY_OPS}")
        object.__setattr__(self, "size", 1 + self.left.size + self.right.size)

    def __repr__(self) -> str:
        return f"Binary({self.op!r}, {self.left!r}, {self.right!r})"


def _collect_terminals(e: Expr, out: set[str]) -> None:
    if isinstance(e, Terminal):
        out.add(e.name)
    elif isinstance(e, Unary):
        _collect_terminals(e.arg, out)
    elif isinstance(e, Binary):
        _collect_terminals(e.left, out)
        _collect_terminals(e.right, out)


def _format_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _precedence(e: Expr) -> int:
    return _PRECEDENCE.get(e.op, _ATOM) if isinstance(e, Binary) else _ATOM


def format_expression(e: Expr) -> str:
    """Canonical text: ``a + b`` with single spaces, functions as ``max(a, b)``, integral constants
    without a decimal point, and only the parentheses the tree needs (``parse(format(e)) == e``)."""
    if isinstance(e, Terminal):
        return e.name
    if isinstance(e, Const):
        return _format_number(e.value)
    if isinstance(e, Unary):
        return f"{e.op}({format_expression(e.arg)})"
    if isinstance(e, Binary):
        if e.op in FUNCTIONS:
            return f"{e.op}({format_expression(e.left)}, {format_expression(e.right)})"
        p = _PRECEDENCE[e.op]
        left, right = format_expression(e.left), format_expression(e.right)
        if _precedence(e.left) < p:
            left = f"({left})"
        if _precedence(e.right) <= p:  # a - (b - c), a * (b * c): the tree is kept as written
            right = f"({right})"
        return f"{left} {e.op} {right}"
    raise TypeError(f"not an expression: {e!r}")


# --------------------------------------------------------------------------------------------
# Tokenizer and parser
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Token:
    kind: str   # "num", "name", "op", "(", ")", ","
    text: str
    pos: int


def _error(text: str, message: str, pos: int | None = None) -> CamError:
    where = ""
    if pos is not None:
        where = f" at position {pos}\n  {text}\n  {' ' * pos}^"
    return CamError(f"sycam expression {text!r}: {message}{where}")


def tokenize(text: str) -> list[_Token]:
    tokens, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            start = i
            while i < n and (text[i].isdigit() or text[i] == "."):
                i += 1
            if i < n and text[i] in "eE":
                j = i + 1
                if j < n and text[j] in "+-":
                    j += 1
                if j < n and text[j].isdigit():
                    i = j
                    while i < n and text[i].isdigit():
                        i += 1
            literal = text[start:i]
            try:
                float(literal)
            except ValueError:
                raise _error(text, f"malformed number {literal!r}", start) from None
            tokens.append(_Token("num", literal, start))
        elif ch.isalpha() or ch == "_":
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            tokens.append(_Token("name", text[start:i], start))
        elif ch in "+-*/":
            tokens.append(_Token("op", ch, i))
            i += 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))
            i += 1
        else:
            raise _error(text, f"unexpected character {ch!r}", i)
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Expr:
        if not self.tokens:
            raise _error(self.text, "empty expression")
        expr = self.expr()
        tok = self.peek()
        if tok is not None:
            if tok.kind == ")":
                raise _error(self.text, "unbalanced parentheses: ')' without a matching '('", tok.pos)
            raise _error(self.text, f"unexpected trailing token {tok.text!r} (an operator is missing?)", tok.pos)
        return expr

    def _left_assoc(self, ops: str, operand: Callable[[], Expr]) -> Expr:
        """``operand (op operand)*`` for the operators in ``ops``, grouped to the left."""
        left = operand()
        while (tok := self.peek()) is not None and tok.kind == "op" and tok.text in ops:
            self.take()
            left = Binary(tok.text, left, operand())
        return left

    def expr(self) -> Expr:
        return self._left_assoc("+-", self.term)

    def term(self) -> Expr:
        return self._left_assoc("*/", self.unary)

    def unary(self) -> Expr:
        tok = self.peek()
        if tok is not None and tok.kind == "op" and tok.text == "-":
            self.take()
            return Unary("neg", self.unary())
        return self.primary()

    def expect_close(self, opening: _Token) -> None:
        tok = self.peek()
        if tok is None:
            raise _error(self.text, "unbalanced parentheses: '(' is never closed", opening.pos)
        if tok.kind != ")":
            raise _error(self.text, f"expected ')' but found {tok.text!r}", tok.pos)
        self.take()

    def primary(self) -> Expr:
        tok = self.peek()
        if tok is None:
            raise _error(self.text, "unexpected end of expression (an operand is missing)", len(self.text))
        if tok.kind == "num":
            self.take()
            return Const(float(tok.text))
        if tok.kind == "(":
            self.take()
            inner = self.expr()
            self.expect_close(tok)
            return inner
        if tok.kind == "name":
            self.take()
            nxt = self.peek()
            if nxt is not None and nxt.kind == "(":
                return self.call(tok)
            if tok.text in FUNCTIONS:
                raise _error(self.text, f"{tok.text!r} is a function; write {tok.text}(...)", tok.pos)
            if tok.text not in TERMINALS:
                raise _error(self.text, f"unknown terminal {tok.text!r}; terminals: {', '.join(TERMINALS)}",
                             tok.pos)
            return Terminal(tok.text)
        if tok.kind == ")":
            raise _error(self.text, "unbalanced parentheses or missing operand before ')'", tok.pos)
        raise _error(self.text, f"unexpected {tok.text!r} (an operand is missing)", tok.pos)

    def call(self, name: _Token) -> Expr:
        if name.text not in FUNCTIONS:
            raise _error(self.text, f"unknown function {name.text!r}; functions: {', '.join(FUNCTIONS)}", name.pos)
        opening = self.take()
        args = [self.expr()]
        while (tok := self.peek()) is not None and tok.kind == ",":
            self.take()
            args.append(self.expr())
        self.expect_close(opening)
        arity = FUNCTIONS[name.text]
        if len(args) != arity:
            raise _error(self.text, f"{name.text} takes {arity} argument(s), got {len(args)}", name.pos)
        return Unary(name.text, args[0]) if arity == 1 else Binary(name.text, args[0], args[1])


def parse(text: str) -> Expr:
    """Parse expression text into a tree; :class:`CamError` names the problem and its position."""
    if not isinstance(text, str):
        raise CamError(f"a sycam expression must be a string, got {type(text).__name__}")
    return _Parser(text).parse()


def canonical(text: str) -> str:
    return format_expression(parse(text))


# --------------------------------------------------------------------------------------------
# Expression files
# --------------------------------------------------------------------------------------------

def write_expression(path: str | Path, expr: Expr | str, comment: str | None = None) -> Path:
    """Write the canonical text of ``expr`` (validated) atomically: a temp file, then os.replace.

    ``comment`` lines (e.g. the metric and score) are written first, each prefixed with ``#``.
    """
    text = format_expression(expr if isinstance(expr, Expr) else parse(expr))
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines + [text]) + "\n")
    return path


def read_expression(path: str | Path) -> Expr:
    """The one expression in a file written by :func:`write_expression` (``#`` lines are comments)."""
    path = Path(path)
    if not path.is_file():
        raise CamError(f"sycam expression file '{path}' does not exist")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise CamError(f"sycam expression file '{path}' must hold exactly one expression line, "
                       f"found {len(lines)}")
    return parse(lines[0])


def resolve_expression(spec: str | Expr) -> Expr:
    """An expression from text, or from the file named by ``file:<path>``."""
    if isinstance(spec, Expr):
        return spec
    if not isinstance(spec, str):
        raise CamError(f"sycam 'expression' must be a string, got {type(spec).__name__}")
    if spec.startswith(FILE_PREFIX):
        name = spec[len(FILE_PREFIX):].strip()
        if not name:
            raise CamError("sycam 'expression': 'file:' must be followed by a path")
        return read_expression(name)
    return parse(spec)


def uses_gradients(expr: Expr) -> bool:
    return any(TERMINALS[t][0] for t in expr.terminals())


# --------------------------------------------------------------------------------------------
# Terminals and evaluation
# --------------------------------------------------------------------------------------------

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


def _evaluate(e: Expr, get: Callable[[str], Tensor], like: Tensor) -> Tensor:
    if isinstance(e, Terminal):
        return get(e.name)
    if isinstance(e, Const):
        return like.new_tensor(e.value)
    if isinstance(e, Unary):
        return UNARY_FNS[e.op](_evaluate(e.arg, get, like))
    return BINARY_FNS[e.op](_evaluate(e.left, get, like), _evaluate(e.right, get, like))


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
    out = _evaluate(expr, lambda name: terminals[name], like)
    return torch.broadcast_to(out, like.shape).clone()


# --------------------------------------------------------------------------------------------
# Observational equivalence
# --------------------------------------------------------------------------------------------

_QUANT = 2 ** 20       # weights are compared at 2^-20 of each image's largest |weight|
_LOG_QUANT = 2 ** 16   # and the per-image scales at 2^-16 in log2
_N_PROJ = 4


class _Fingerprinter:
    """Keys of weight tensors (C, n, K): equal keys = equal weights (scale key: up to a positive
    factor per image, which the engine's min-max removes; exact key: including that factor).

    Weights are quantised to integers and projected on random integer vectors with integer
    arithmetic, which is exact and independent of summation order, so equal weights give equal
    keys on every device and chunking. Distinct weights collide with probability ~2^-44.
    """

    def __init__(self, n: int, k: int, device, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.proj = torch.randint(1, 2 ** 10, (_N_PROJ, n * k), generator=gen).to(device)
        self.proj_scale = torch.randint(1, 2 ** 10, (n,), generator=gen).to(device)

    def __call__(self, w: Tensor) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        w = w.double()
        scale = w.abs().amax(dim=2, keepdim=True)                          # (C, n, 1)
        live = scale > 0
        q = torch.round(torch.where(live, w / scale.clamp_min(1e-300), 0.0) * _QUANT).long().flatten(1)
        log_scale = torch.where(live.squeeze(2), torch.round(torch.log2(scale.squeeze(2).clamp_min(1e-300))
                                                             * _LOG_QUANT), -(2.0 ** 40)).long()
        shape_key = torch.stack([(q * p).sum(dim=1) for p in self.proj], dim=1)   # (C, P)
        scale_key = (log_scale * self.proj_scale).sum(dim=1, keepdim=True)         # (C, 1)
        shape_rows = [tuple(r) for r in shape_key.tolist()]
        exact_rows = [s + tuple(r) for s, r in zip(shape_rows, scale_key.tolist())]
        return shape_rows, exact_rows


def map_equivalence_key(weights: Tensor, seed: int = 0) -> tuple[int, ...]:
    """Key of one weight tensor (N, K) that is equal for w and c * w (c > 0 per image)."""
    fp = _Fingerprinter(*weights.shape, weights.device, seed)
    return fp(weights[None])[0][0]


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------

@dataclass
class SynthesisResult:
    best_expression: str
    best_score: float
    table: list[tuple[str, int, float]]      # (expression, size, mean metric) in evaluation order
    metric: str
    maximise: bool                            # True: the metric is higher-is-better
    pruned: dict[str, str] = field(default_factory=dict)  # expression -> equivalent earlier one
    stopped: str = "max_size"                 # "max_size" or "time_budget"
    elapsed_s: float = 0.0

    @property
    def best_size(self) -> int:
        return parse(self.best_expression).size

    def score_of(self, expression: str) -> float:
        text = canonical(expression)
        for expr, _size, score in self.table:
            if expr == text:
                return score
        raise KeyError(f"{text!r} was not evaluated" + (f" (pruned: same maps as {self.pruned[text]!r})"
                                                        if text in self.pruned else ""))


@dataclass
class _Data:
    """Everything the search needs, computed once: activations, terminals, images, targets."""

    activations: Tensor           # (N, K, *s)
    terminals: dict[str, Tensor]  # name -> (N, K)
    images: Tensor
    targets: Tensor               # (N,) class indices
    predictions: Tensor           # (N,)
    n_sample: int                 # the first n_sample images are the equivalence sample


def _prepare(model, images, layer, targets, terminals, batch_size, memory_mb) -> _Data:
    need_grad = any(TERMINALS[t][0] for t in terminals)
    n = images.shape[0]
    step = batch_size or n
    if targets is not None:
        targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
        if targets.numel() != n:
            raise CamError(f"got {targets.numel()} targets for {n} images; give one target per image")
    acts, terms, tgts, preds = [], {t: [] for t in terminals}, [], []
    with eval_mode(model):
        for start in range(0, n, step):
            batch = images[start:start + step]
            x = capture(model, batch, layer, None if targets is None else targets[start:start + step],
                        need_grad, memory_mb=memory_mb)
            cache = TerminalSet(x, 0)
            with torch.no_grad():
                for t in terminals:
                    terms[t].append(cache[t])
            acts.append(x.activations)
            tgts.append(x.targets)
            preds.append(x.logits.argmax(dim=1))
            del x, cache  # frees the retained graph before the next batch
    return _Data(torch.cat(acts), {t: torch.cat(v) for t, v in terms.items()}, images,
                 torch.cat(tgts), torch.cat(preds), min(step, n))


class _Budget:
    def __init__(self, seconds: float | None):
        self.start = time.monotonic()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exhausted(self) -> bool:
        return self.seconds is not None and self.elapsed > self.seconds


class _Scorer:
    """Mean metric of candidates' maps, (candidate, image) rows evaluated in memory-sized chunks."""

    def __init__(self, model, data: _Data, metric: str, metric_params: dict, masks: Tensor | None,
                 memory_mb: float, seed: int):
        self.model, self.data, self.metric = model, data, metric
        self.params, self.masks, self.memory_mb, self.seed = metric_params, masks, memory_mb, seed
        a, img = data.activations, data.images
        per_row = (a[0].numel() + 4 * img[0, 0].numel() + img[0].numel() * 4) * 4
        self.rows = max(1, int(memory_mb * 2 ** 20 // per_row))

    def __call__(self, weights: Tensor, budget: _Budget | None) -> list[float] | None:
        """Scores (C,) of candidate weights (C, N, K); None if the time budget ran out."""
        from .metrics import evaluate_applies
        data = self.data
        c, n = weights.shape[:2]
        flat = weights.reshape(c * n, -1)
        sums = torch.zeros(c, dtype=torch.float64, device=flat.device)
        counts = torch.zeros(c, dtype=torch.float64, device=flat.device)
        size = data.images.shape[2:]
        for start in range(0, c * n, self.rows):
            if budget is not None and budget.exhausted():
                return None
            rows = torch.arange(start, min(start + self.rows, c * n), device=flat.device)
            cand, img = rows // n, rows % n
            acts = data.activations[img]
            w = flat[rows].view(acts.shape[:2] + (1,) * (acts.ndim - 2))
            maps, _flags = postprocess((w * acts).sum(dim=1), size)
            fields = {} if self.masks is None else {"masks": self.masks[img]}
            devices = [flat.device] if flat.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)  # random metrics (e.g. imputation noise) repeat exactly
                values, applies = evaluate_applies(
                    self.model, data.images[img], maps, self.metric, data.targets[img],
                    predictions=data.predictions[img], memory_mb=self.memory_mb, **fields, **self.params)
            ok = applies & torch.isfinite(values)
            sums.index_add_(0, cand, torch.where(ok, values.double(), 0.0))
            counts.index_add_(0, cand, ok.double())
        means = torch.where(counts > 0, sums / counts.clamp_min(1), math.nan)
        return means.tolist()


def _check_metric(metric: str, metric_params: dict, masks) -> bool:
    from .metrics import METRICS
    entry = METRICS.get(metric)
    if "higher_is_better" not in entry.meta:
        raise CamError(f"metric '{metric}' does not say whether higher is better")
    unsupported = {"reference", "predictions", "reference_predictions"} & set(metric_params)
    needs = set(entry.meta.get("needs", ()))
    if "reference" in needs or unsupported:
        raise CamError(f"synthesise: metric '{metric}' compares with reference heatmaps/predictions "
                       f"({', '.join(sorted(unsupported | (needs & {'reference'})))}) that depend on the "
                       "candidate; the search cannot supply them")
    if "masks" in needs and masks is None:
        raise CamError(f"synthesise: metric '{metric}' needs ground-truth 'masks' (N, *spatial)")
    fields = {"masks", "reference", "predictions", "reference_predictions", "fill", "memory_mb"}
    entry.check_params({k: v for k, v in metric_params.items() if k not in fields})
    return bool(entry.meta["higher_is_better"])


def _check_options(max_size, terminals, constants, operators, time_budget_s, batch_size, memory_mb):
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
        raise CamError(f"synthesise: max_size must be an integer >= 1, got {max_size!r}")
    terminals = list(TERMINALS) if terminals is None else list(dict.fromkeys(terminals))
    bad = [t for t in terminals if t not in TERMINALS]
    if bad or not terminals:
        raise CamError(f"synthesise: terminals must be a non-empty subset of {list(TERMINALS)}, got {bad or terminals}")
    constants = list(dict.fromkeys(float(c) for c in constants))
    for c in constants:
        if not math.isfinite(c) or c < 0:
            raise CamError(f"synthesise: constants must be finite and >= 0 (negatives come from neg), got {c}")
    operators = list(UNARY_OPS + BINARY_OPS) if operators is None else list(dict.fromkeys(operators))
    bad = [o for o in operators if o not in UNARY_OPS + BINARY_OPS]
    if bad:
        raise CamError(f"synthesise: unknown operator(s) {bad}; allowed: {list(UNARY_OPS + BINARY_OPS)}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise CamError(f"synthesise: time_budget_s must be > 0 or None, got {time_budget_s!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise CamError(f"synthesise: batch_size must be a positive integer or None, got {batch_size!r}")
    if not memory_mb > 0:
        raise CamError(f"synthesise: memory_mb must be > 0, got {memory_mb!r}")
    return terminals, constants, operators


def synthesise(model: nn.Module, images: Tensor, target_layer: nn.Module | str,
               metric: str = "pointing_game", metric_params: Mapping | None = None,
               masks: Tensor | None = None, targets=None, max_size: int = 4,
               terminals: Sequence[str] | None = None, constants: Sequence[float] = DEFAULT_CONSTANTS,
               operators: Sequence[str] | None = None, time_budget_s: float | None = None,
               seed: int = 0, batch_size: int | None = None, memory_mb: float = 1024.0) -> SynthesisResult:
    """Find the expression whose CAMs score best on ``metric`` over ``images`` [our-reading].

    1. One capture per batch of ``batch_size`` images (all at once if None); every allowed terminal
       is computed once per batch and cached for the whole search (Score/Ablation: ~K forwards).
    2. Bottom-up enumeration by size (a node counts 1): size 1 = ``constants`` then ``terminals``;
       size s = unary(size s-1) and binary(size i, size s-1-i). Commutative operators are built
       with the smaller (size, index) operand on the left only, and no operator is applied to
       constant-only operands (constant folding would only add more constants).
    3. Observational equivalence on the sample batch (the first batch): a candidate whose weights
       equal an earlier one's is dropped; one equal to an earlier one up to a positive factor per
       image (same maps after the engine's min-max) is kept as a building block but not scored.
       Both are listed in ``pruned``.
    4. Quality oracle: the mean of ``metric`` over the images it applies to, with the engine's own
       post-processing (ReLU, min-max, up-sampling) of every candidate's maps. The metric's
       ``meta["higher_is_better"]`` decides: maximised if true, minimised otherwise
       (``result.maximise``). Candidates of one size are scored together, their (candidate, image)
       rows chunked by ``memory_mb``. Random metrics are seeded with ``seed`` for every chunk.
    5. Stop after ``max_size`` or when ``time_budget_s`` runs out (checked between chunks from
       size 2 on: size 1 is always scored; with a budget the result depends on speed).
       Best: score, then smaller size, then canonical text.

    ``metric_params`` go to the metric (e.g. ``tolerance_px``, ``fill``); ``masks`` (N, *S) are the
    ground-truth masks for localisation metrics. ``targets``: class indices, or None for the
    model's predictions. Metrics that need per-candidate reference heatmaps are not supported.
    """
    budget = _Budget(time_budget_s)  # (importing cambench has registered scorecam / ablationcam)
    metric_params = dict(metric_params or {})
    if masks is None:
        masks = metric_params.pop("masks", None)
    maximise = _check_metric(metric, metric_params, masks)
    terminals, constants, operators = _check_options(max_size, terminals, constants, operators,
                                                     time_budget_s, batch_size, memory_mb)
    if not isinstance(images, Tensor) or images.ndim not in (4, 5) or not images.is_floating_point():
        raise CamError("synthesise: images must be a float tensor (N, C, H, W) or (N, C, D, H, W)")
    if callable(targets) and not isinstance(targets, Tensor):
        raise CamError("synthesise: targets must be class indices or None (metrics score classes)")
    if masks is not None:
        masks = torch.as_tensor(masks, device=images.device)
        if masks.shape != images.shape[:1] + images.shape[2:]:
            raise CamError(f"synthesise: masks {tuple(masks.shape)} must be (N, *spatial) = "
                           f"{tuple(images.shape[:1] + images.shape[2:])}")
    layer = resolve_layer(model, target_layer)

    data = _prepare(model, images, layer, targets, terminals, batch_size, memory_mb)
    n_s, k = data.n_sample, data.activations.shape[1]
    scorer = _Scorer(model, data, metric, metric_params, masks, memory_mb, seed)
    fingerprint = _Fingerprinter(n_s, k, images.device, seed)
    sample_is_all = n_s == images.shape[0]
    like = data.activations.new_zeros((n_s, k))
    unary = [o for o in operators if o in UNARY_OPS]
    binary = [o for o in operators if o in BINARY_OPS]
    gen_chunk = max(1, int(memory_mb * 2 ** 20 // (n_s * k * 8 * 6)))

    pool: dict[int, list[Expr]] = {}        # distinct building blocks by size
    pool_w: dict[int, Tensor] = {}          # their weights on the sample, (M, n_s, K)
    constant_only: dict[int, list[bool]] = {}  # members without a terminal
    exact_seen: dict[tuple, str] = {}
    shape_seen: dict[tuple, str] = {}
    pruned: dict[str, str] = {}
    table: list[tuple[str, int, float]] = []
    stopped = "max_size"

    def full_weights(size: int, idx: list[int]) -> Tensor:
        if sample_is_all:
            return pool_w[size][idx]
        full_like = data.activations.new_zeros(data.activations.shape[:2])
        return torch.stack([torch.broadcast_to(_evaluate(pool[size][i], data.terminals.__getitem__, full_like),
                                               full_like.shape) for i in idx])

    def candidates(size: int):
        """(expressions, weight-producing closure) chunks of all candidates of one size."""
        if size == 1:
            exprs = [Const(c) for c in constants] + [Terminal(t) for t in terminals]
            yield exprs, lambda: torch.stack([torch.broadcast_to(
                _evaluate(e, lambda t: data.terminals[t][:n_s], like), like.shape) for e in exprs])
            return
        for op in unary:
            src = [i for i, const in enumerate(constant_only.get(size - 1, [])) if not const]
            for at in range(0, len(src), gen_chunk):
                idx = src[at:at + gen_chunk]
                yield ([Unary(op, pool[size - 1][i]) for i in idx],
                       lambda idx=idx, op=op: UNARY_FNS[op](pool_w[size - 1][idx]))
        for op in binary:
            for ls in range(1, size - 1):
                rs = size - 1 - ls
                if op in COMMUTATIVE and ls > rs:
                    continue
                left, right = pool.get(ls, []), pool.get(rs, [])
                left_const, right_const = constant_only.get(ls, []), constant_only.get(rs, [])
                pairs = [(i, j) for i in range(len(left)) for j in range(len(right))
                         if not (op in COMMUTATIVE and ls == rs and i > j)
                         and not (left_const[i] and right_const[j])]
                for at in range(0, len(pairs), gen_chunk):
                    chunk = pairs[at:at + gen_chunk]
                    li = [p[0] for p in chunk]
                    ri = [p[1] for p in chunk]
                    yield ([Binary(op, left[i], right[j]) for i, j in chunk],
                           lambda li=li, ri=ri, op=op, ls=ls, rs=rs: BINARY_FNS[op](pool_w[ls][li], pool_w[rs][ri]))

    with torch.no_grad():
        for size in range(1, max_size + 1):
            new_exprs, new_w, to_score = [], [], []
            for exprs, make in candidates(size):
                if size > 1 and budget.exhausted():
                    stopped = "time_budget"
                    break
                w = make()
                shape_keys, exact_keys = fingerprint(w)
                keep = []
                for i, (e, sk, ek) in enumerate(zip(exprs, shape_keys, exact_keys)):
                    text = format_expression(e)
                    if ek in exact_seen:
                        pruned[text] = exact_seen[ek]
                        continue
                    exact_seen[ek] = text
                    keep.append(i)
                    if sk in shape_seen:
                        pruned[text] = shape_seen[sk]
                    else:
                        shape_seen[sk] = text
                        to_score.append(len(new_exprs) + len(keep) - 1)
                new_exprs += [exprs[i] for i in keep]
                if keep:
                    new_w.append(w[keep])
            if new_exprs:
                pool[size] = new_exprs
                constant_only[size] = [e.constant_only for e in new_exprs]
                pool_w[size] = torch.cat(new_w)
            # Score this size's distinct candidates in groups of whole images.
            group = max(1, scorer.rows // max(images.shape[0], 1))
            for at in range(0, len(to_score), group):
                idx = to_score[at:at + group]
                # Size 1 is always scored in full, so that there is a result whatever the budget.
                scores = scorer(full_weights(size, idx), None if size == 1 else budget)
                if scores is None:
                    stopped = "time_budget"
                    break
                table += [(format_expression(new_exprs[i]), size, s) for i, s in zip(idx, scores)]
            if stopped == "time_budget":
                break

    scored = [row for row in table if not math.isnan(row[2])]
    if not scored:
        raise CamError(f"synthesise: no candidate could be scored (metric '{metric}' applied to no image"
                       + (" before the time budget ran out)" if stopped == "time_budget" else ")"))
    sign = -1.0 if maximise else 1.0
    best = min(scored, key=lambda row: (sign * row[2], row[1], row[0]))
    return SynthesisResult(best[0], best[2], table, metric, maximise, pruned, stopped, budget.elapsed)
