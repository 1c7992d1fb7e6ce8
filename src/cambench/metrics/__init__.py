"""Metrics: each a registered function of a :class:`MetricInputs` batch returning per-image values.

The registry and what every metric shares live in :mod:`cambench.metrics.base` (re-exported here);
importing this package registers every metric module in it (found by pkgutil, as cambench.methods).
"""
import importlib
import pkgutil

from .base import (
    INPUT_FIELDS,
    METRICS,
    SCORES,
    MetricInputs,
    TableContext,
    batched_logits,
    chunk_size,
    evaluate,
    evaluate_applies,
    explained_batches,
    metrics,
    model_logits,
    model_scores,
    per_method_values,
    register_metric,
    table_cached,
    target_scores,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["INPUT_FIELDS", "METRICS", "SCORES", "MetricInputs", "TableContext", "batched_logits", "chunk_size",
           "evaluate", "evaluate_applies", "explained_batches", "metrics", "model_logits", "model_scores",
           "per_method_values", "register_metric", "table_cached", "target_scores"]
