"""SyCAM: metric-guided synthesis of CAM channel-weight expressions (docs/methods.md §2.14, our reading).

* :mod:`.grammar`: expression trees, the grammar and its hand-written parser, expression files;
* :mod:`.terminals`: the per-channel terminals of a batch and the evaluation of an expression on them;
* :mod:`.search`: the bottom-up search with observational-equivalence pruning and a metric as oracle.

The method that applies an expression is registered as ``sycam`` in :mod:`cambench.methods.sycam`.
"""
from .grammar import (
    BINARY_OPS,
    COMMUTATIVE,
    DEFAULT_CONSTANTS,
    FILE_PREFIX,
    FUNCTIONS,
    TERMINALS,
    UNARY_OPS,
    Binary,
    Const,
    Expr,
    Terminal,
    Unary,
    canonical,
    format_expression,
    parse,
    read_expression,
    resolve_expression,
    tokenize,
    uses_gradients,
    write_expression,
)
from .search import SynthesisResult, map_equivalence_key, synthesise
from .terminals import SAFE_DIV_EPS, TerminalSet, evaluate_expression, evaluate_tree, safe_div

__all__ = ["BINARY_OPS", "COMMUTATIVE", "DEFAULT_CONSTANTS", "FILE_PREFIX", "FUNCTIONS", "SAFE_DIV_EPS", "TERMINALS",
           "UNARY_OPS", "Binary", "Const", "Expr", "SynthesisResult", "Terminal", "TerminalSet", "Unary", "canonical",
           "evaluate_expression", "evaluate_tree", "format_expression", "map_equivalence_key", "parse",
           "read_expression", "resolve_expression", "safe_div", "synthesise", "tokenize", "uses_gradients",
           "write_expression"]
