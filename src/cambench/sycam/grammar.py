"""SyCAM's expression language: trees, the grammar and its parser, expression files (docs/methods.md §2.14).

Everything in the SyCAM package is [our-reading]: the paper's code is not public. An expression over
per-channel *terminals* defines channel weights ``w``; the engine turns them into ``ReLU(sum_k w_k A^k)``
like any other channel-weight method (registered as ``sycam`` in ``cambench.methods.sycam``).

Grammar (infix text; the canonical form is what :func:`format_expression` prints)::

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | primary                 # "-e" is read as neg(e)
    primary := NUMBER | TERMINAL | FUNC "(" expr ["," expr] ")" | "(" expr ")"

Terminals: see :data:`TERMINALS`; non-negative numeric constants. Operators: ``+ - * /`` (``/`` is
safe: 0 where |denominator| < 1e-12), ``max(a, b)``, ``min(a, b)``, ``relu(a)``, ``neg(a)``.
The parser is hand-written; nothing is ever passed to ``eval``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..engine import CamError
from ..utils import atomic_path

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
