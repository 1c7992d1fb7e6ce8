"""Name → function registries for CAM methods, metrics and perturbations.

A registry entry keeps the function plus a little metadata; parameters are validated against the
function's keyword arguments so a config typo fails before any computation starts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable


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
        """Unknown names and values of the wrong kind (judged by the default's type) are errors."""
        allowed = self.parameters()
        loc = f"{where}: " if where else ""
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{loc}unknown parameter(s) {unknown} for {self.kind} '{self.name}'; "
                             f"allowed: {sorted(allowed) or 'none'}")
        for name, value in params.items():
            expected = _kind_of(allowed[name])
            wrong = expected and value is not None and (
                not isinstance(value, expected[1])
                or (isinstance(value, bool) and bool not in expected[1]))  # True is no number
            if wrong:
                raise ValueError(f"{loc}parameter '{name}' of {self.kind} '{self.name}' must be "
                                 f"{expected[0]}, got {value!r}")

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "entry")


def _kind_of(default) -> tuple[str, tuple] | None:
    """What a parameter accepts, judged by its default (None or no default: anything)."""
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


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, **meta) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = Entry(name, fn, {"kind": self.kind, **meta})
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
