"""Name → function registries for CAM methods, metrics and perturbations.

A registry entry keeps the function plus a little metadata; parameters are validated against the
function's keyword arguments so a config typo fails before any computation starts.

Bounds are declared once, on the registration (``bounds={"eps": "(0, inf)", "steps": "int [1, inf)",
"substrate": SUBSTRATES, "percentiles": "each (0, 100)", "k": ("adaptive", "(0, 100]")}``), and
:meth:`Entry.check_params` enforces them wherever parameters are checked: the config validation
before any job, and every library call. A bound is one alternative or a tuple/list of them, each
either an interval (``[``/``]`` closed, ``(``/``)`` open, ``inf`` for no end, ``int`` for integers
only, ``each`` for every element of a list) or a literal string choice. ``None`` passes only where the
parameter's default is None. What one parameter's bound cannot say (finercam's base must read the
target) goes in a ``check_params=fn(params)`` hook of the registration, which raises ValueError.

A method or metric whose definition or default is our reading, not the paper's, says what in
``our_reading="..."`` on its registration (the verdict's caveats read it; docs/methods.md §6).
"""
from __future__ import annotations

import inspect
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable


class ParamError(ValueError):
    """A parameter value outside its type or bounds; ``param`` names the parameter (for the config key)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class UnknownNameError(KeyError):
    """A method / metric / perturbation name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable
    meta: dict = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        """Keyword parameters of the function with their defaults (the first positional arg is the context)."""
        sig = inspect.signature(self.fn)
        params = list(sig.parameters.values())[1:]
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY
                or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD}

    def check_params(self, params: dict, where: str = "") -> None:
        """Unknown names, values of the wrong kind (judged by the default's type) and values outside
        the registered bounds are errors (:class:`ParamError`, naming the parameter)."""
        allowed = self.parameters()
        loc = f"{where}: " if where else ""
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ParamError(f"{loc}unknown parameter(s) {unknown} for {self.kind} '{self.name}'; "
                             f"allowed: {sorted(allowed) or 'none'}")
        bounds = self.meta.get("bounds") or {}
        for name, value in params.items():
            if name in bounds:  # the declared bound decides the type too (k: a number or 'adaptive')
                if value is None and allowed[name] is None:
                    continue
                problem = check_bound(bounds[name], value)
                if problem:
                    raise ParamError(f"{loc}parameter '{name}' of {self.kind} '{self.name}' must be {problem}, "
                                     f"got {value!r}", name)
                continue
            expected = param_kind(allowed[name])
            wrong = expected and value is not None and (
                not isinstance(value, expected[1])
                or (isinstance(value, bool) and bool not in expected[1]))  # True is no number
            if wrong:
                raise ParamError(f"{loc}parameter '{name}' of {self.kind} '{self.name}' must be "
                                 f"{expected[0]}, got {value!r}", name)
        check = self.meta.get("check_params")  # what single bounds cannot say (e.g. finercam's base)
        if check is not None:
            try:
                check(params)
            except ValueError as err:  # attributed to the parameter it names, or the one given one it quotes
                quoted = [p for p in params if f"'{p}'" in str(err) or f" {p} '" in str(err)]
                param = err.param if isinstance(err, ParamError) and err.param else \
                    quoted[0] if len(quoted) == 1 else None
                raise ParamError(f"{loc}{err}", param) from None

    def declared(self, key: str, params: dict, default: Any = None) -> Any:
        """A registration's metadata ``key`` for these parameters: a constant, or a function of the
        parameters (called with the defaults filled in), e.g. ``needs_gradients``, ``reads_target``,
        ``scaling``; ``default`` where the registration does not declare it."""
        value = self.meta.get(key, default)
        return value({**self.parameters(), **params}) if callable(value) else value

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "entry")


def param_kind(default) -> tuple[str, tuple] | None:
    """What a parameter accepts, judged by its default (None or no default: anything): (words, types)."""
    if isinstance(default, bool):
        return "true or false", (bool,)
    if isinstance(default, (int, float)):
        return "a number", (int, float)
    if isinstance(default, str):
        return "a string", (str,)
    if isinstance(default, (list, tuple)):
        return "a list", (list, tuple)
    if isinstance(default, dict):
        return "a mapping", (dict,)
    return None


_INTERVAL = re.compile(r"^(each )?(int )?([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])$")


def _end(text: str) -> float:
    return {"inf": math.inf, "-inf": -math.inf}.get(text) or float(text)


def _parse_bound(spec) -> list:
    """Alternatives of a bound: ('interval', each, integer, lo, lo_open, hi, hi_open, text) or ('choice', str)."""
    out = []
    for alt in (spec if isinstance(spec, (tuple, list)) else (spec,)):
        if not isinstance(alt, str):
            raise ValueError(f"a bound is an interval string or a string choice, got {alt!r}")
        m = _INTERVAL.match(alt)
        if m:
            each, integer, lo_b, lo, hi, hi_b = m.groups()
            out.append(("interval", bool(each), bool(integer), _end(lo), lo_b == "(", _end(hi), hi_b == ")",
                        f"{lo_b}{lo}, {hi}{hi_b}"))
        else:
            out.append(("choice", alt))
    return out


def _in_interval(alt, value) -> bool:
    _, _, integer, lo, lo_open, hi, hi_open, _ = alt
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        return False
    if integer and not isinstance(value, numbers.Integral):
        return False
    return (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)


def check_bound(spec, value) -> str:
    """'' if ``value`` satisfies the bound, else what it must be (e.g. 'a number in (0, inf)')."""
    alts = _parse_bound(spec)
    for alt in alts:
        if alt[0] == "choice" and isinstance(value, str) and value == alt[1]:
            return ""
        if alt[0] == "interval" and not alt[1] and _in_interval(alt, value):
            return ""
        if alt[0] == "interval" and alt[1] and isinstance(value, (list, tuple)) and value \
                and all(_in_interval(alt, v) for v in value):
            return ""
    choices = [repr(a[1]) for a in alts if a[0] == "choice"]
    parts = [("one of " if len(choices) > 1 else "") + ", ".join(choices)] if choices else []
    for a in alts:
        if a[0] == "interval":
            kind = "integer" if a[2] else "number"
            article = "an" if a[2] else "a"
            parts.append(f"a non-empty list of {kind}s in {a[7]}" if a[1] else f"{article} {kind} in {a[7]}")
    return " or ".join(parts)


def nested_params(key: str, registry: Registry, name_key: str, default: str,
                  ignore: Callable[[str], bool] = lambda name: False) -> Callable[[dict], None]:
    """A ``check_params`` hook for a parameter that holds another entry's parameters (MetaCAM's
    ``metric_params`` of its ``metric``): checked by that entry, errors keyed '<key>.<parameter>'."""
    def check(params: dict) -> None:
        name = params.get(name_key, default)
        try:
            entry = registry.get(name)
        except UnknownNameError as err:
            raise ParamError(f"'{name_key}': {err}", name_key) from None
        inner = params.get(key) or {}
        if not isinstance(inner, dict):
            raise ParamError(f"'{key}' must be a mapping of {registry.kind} '{name}' parameters, got {inner!r}", key)
        try:
            entry.check_params({k: v for k, v in inner.items() if not ignore(k)})
        except ParamError as err:
            raise ParamError(str(err), f"{key}.{err.param}" if err.param else key) from None
    return check


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            entry = Entry(name, fn, {"kind": self.kind, **meta})
            stray = sorted(set(meta.get("bounds") or {}) - set(entry.parameters()))
            if stray:
                raise ValueError(f"{self.kind} '{name}': bounds name parameter(s) {stray} that '{name}' does not take")
            for spec in (meta.get("bounds") or {}).values():
                _parse_bound(spec)
            self._entries[name] = entry
            return fn
        return deco

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
