"""The metric registry and what every metric shares: :class:`MetricInputs` (one batch) with its
:class:`TableContext` (the same for every batch of a table), target scores, batched model calls, the
per-table cache, and :func:`evaluate`.

A metric returns ``values`` (N,) or ``(values, applies)``; ``applies`` marks the images the metric
is defined for (e.g. consistency only where the prediction did not change). :func:`evaluate`
returns NaN for the others; the tidy tables leave those rows out instead of writing NaN.

The metric modules import from here, never from the package, which imports them (discovery).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..inference import inference_copy
from ..registry import Registry
from ..utils import eval_mode

METRICS = Registry("metric")
register_metric = METRICS.register

SCORES = ("prob", "logit")


@dataclass
class TableContext:
    """What is the same for every batch of a metric table: the model, the method and the shared cache."""
    model: nn.Module | None = None
    network: nn.Module | None = None        # the model itself (``model`` may be its inference copy)
    fill: Tensor | None = None              # (C,) pixel value used to remove pixels (dataset mean)
    memory_mb: float = 256.0                # budget for batched model evaluations
    # Metrics that re-explain images (max-sensitivity, randomisation, axioms) need the method:
    method: str | None = None               # label of the CAM method the heatmaps come from
    method_params: dict | None = None       # its parameters (with 'method' when the label is an alias)
    target_layer: str | None = None         # the layer the heatmaps were computed at
    batch_size: int = 64                    # images per CAM pass when a metric re-explains
    cache: dict | None = None               # shared across the methods of one table (method-free terms)
    # Every method of the table: label -> (parameters, its heatmaps (N, *S), on any device). With
    # ``cache``, metrics that re-explain images explain all of them in the same engine passes.
    table_methods: Mapping[str, tuple[dict, Tensor]] | None = None

    @property
    def original_model(self) -> nn.Module | None:
        """The model itself, for hooks and copies: ``network`` when given (``model`` may be its
        inference copy), else ``model``."""
        return self.network if self.network is not None else self.model


@dataclass
class MetricInputs:
    """One batch of a metric table; what the whole table shares is in ``context``."""
    images: Tensor                          # (N, C, *S) pixel space [0, 1]
    heatmaps: Tensor                        # (N, *S) in [0, 1]
    targets: Tensor                         # (N,) class the heatmap explains
    context: TableContext = field(default_factory=TableContext)
    masks: Tensor | None = None             # (N, *S) bool ground-truth object masks
    # Annotated boxes of each image's label class, padded (localisation.label_class_boxes):
    boxes: Tensor | None = None             # (N, B, 4) float (y0, x0, y1, x1) pixel edges, stop exclusive
    box_valid: Tensor | None = None         # (N, B) bool: which of ``boxes`` are real, not padding
    reference: Tensor | None = None         # (N, *S) heatmaps of the unperturbed images
    predictions: Tensor | None = None       # (N,) predictions on these images
    reference_predictions: Tensor | None = None  # (N,) predictions on the unperturbed images
    keys: Tensor | None = None              # (N,) stable per-image integer keys (noise of a metric)
    # What the heatmap file stored for this method (the axioms read them instead of recomputing):
    raw: Tensor | None = None               # (N, *s) signed map at feature resolution
    scores: Tensor | None = None            # (N,) target logits the maps were computed from
    weights: Tensor | None = None           # (N, K) channel weights (methods whose map is sum_k w_k A^k)

    def image_keys(self) -> Tensor:
        if self.keys is not None:
            return torch.as_tensor(self.keys, device=self.images.device)
        return torch.arange(self.images.shape[0], device=self.images.device)

    def require(self, *names: str, metric: str) -> None:
        """Raise naming the inputs of ``names`` (of the batch or its ``context``) that are missing."""
        missing = [n for n in names if getattr(self.context if n in TABLE_FIELDS else self, n) is None]
        if missing:
            raise ValueError(f"metric '{metric}' needs {', '.join(missing)}")


# The keywords of a metric input, per batch or per table (what evaluate() sorts out of its params):
TABLE_FIELDS = frozenset(TableContext.__dataclass_fields__)
INPUT_FIELDS = frozenset(MetricInputs.__dataclass_fields__) - {"context"} | TABLE_FIELDS


def target_scores(logits: Tensor, targets: Tensor, score: str) -> Tensor:
    """Target scores (N,) from logits (N, K): softmax probability or logit."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score == "prob":
        logits = logits.softmax(dim=1)
    return logits.gather(1, targets[:, None]).squeeze(1)


def model_scores(model: nn.Module, images: Tensor, targets: Tensor, score: str) -> Tensor:
    """Target scores (N,) of a batch: softmax probability or logit."""
    return target_scores(model(images), targets, score)


def explained_batches(x: MetricInputs, methods: Mapping[str, dict], images: Tensor,
                      model: nn.Module | None = None) -> Iterator[tuple[slice, dict[str, Tensor]]]:
    """``(rows, {label: maps (B, *S)})`` for ``images`` and ``x.targets`` in batches of
    ``x.context.batch_size``: one engine pass per batch serves every method of ``methods`` (one forward
    and backward for the gradient family, a MetaCAM member computed once). ``model`` defaults to the
    unmodified network."""
    from ..engine import explain_many  # the engine imports nothing from the metrics; keep it that way
    ctx = x.context
    if ctx.target_layer is None:
        raise ValueError("this metric re-explains images: give method, method_params and target_layer")
    net = model if model is not None else ctx.original_model
    for i in range(0, images.shape[0], ctx.batch_size):
        rows = slice(i, min(i + ctx.batch_size, images.shape[0]))
        yield rows, explain_many(net, images[rows], methods, ctx.target_layer, x.targets[rows],
                                 memory_mb=ctx.memory_mb).maps


def table_cached(x: MetricInputs, key: tuple, anchors: tuple[Tensor, ...], compute: Callable[[], Any],
                 equal: tuple[Tensor, ...] = ()) -> Any:
    """``compute()`` once per table (``x.context.cache``) for these very tensors ``anchors`` (the images
    or maps it depends on) and tensors equal to ``equal`` (e.g. targets, which a caller may rebuild
    for every call); without a cache, every call computes.

    The entry keeps its anchors and is reused only for the same objects: an id() alone can come
    back for the next method's freshly loaded maps once the previous ones are freed.
    """
    if x.context.cache is None:
        return compute()
    entry = x.context.cache.get(key)
    if (entry is None or len(entry[0]) != len(anchors) or any(a is not b for a, b in zip(entry[0], anchors))
            or len(entry[1]) != len(equal) or not all(torch.equal(a, b) for a, b in zip(entry[1], equal))):
        entry = x.context.cache[key] = (anchors, tuple(t.clone() for t in equal), compute())
    return entry[2]


def batched_logits(x: MetricInputs, images: Tensor) -> Tensor:
    """Logits (M, K) of a stack of images by ``x.context.model``, in chunks within the memory budget."""
    step = chunk_size(math.prod(images.shape[1:]) * images.element_size() * 4, x.context.memory_mb)
    return torch.cat([x.context.model(images[i:i + step]) for i in range(0, max(images.shape[0], 1), step)])


def model_logits(x: MetricInputs) -> Tensor:
    """Logits (N, K) of ``x.images`` themselves: computed once per table, read by many metrics."""
    return table_cached(x, ("model_logits",), (x.images, x.context.model), lambda: batched_logits(x, x.images))


def per_method_values(x: MetricInputs, key: tuple,
                      compute: Callable[[dict[str, dict], dict[str, Tensor]], dict[str, Tensor]]) -> Tensor:
    """Values (N,) of ``x.context.method`` from ``compute(methods, heatmaps)``, which returns values for
    every method it is given (label -> parameters, label -> stored heatmaps).

    Within a table (``x.context.table_methods`` and ``x.context.cache`` set) ``compute`` runs once, for
    all the table's methods, so that they share the engine passes; the other methods' values wait in
    the cache under ``key`` (which must hold every parameter of the metric) for their turn. Outside a
    table, ``compute`` sees ``x``'s method alone.
    """
    ctx = x.context
    if ctx.method is None:
        raise ValueError("this metric re-explains images: give method, method_params and target_layer")
    table = ctx.table_methods
    if table is None or ctx.cache is None or ctx.method not in table:
        return compute({ctx.method: dict(ctx.method_params or {})}, {ctx.method: x.heatmaps})[ctx.method]
    values = table_cached(x, key, (x.images, ctx.original_model), lambda: compute(
        {m: dict(p or {}) for m, (p, _) in table.items()}, {m: h for m, (_, h) in table.items()}), equal=(x.targets,))
    return values[ctx.method]


def chunk_size(per_item_bytes: int, memory_mb: float) -> int:
    return max(1, int(memory_mb * 2**20 // max(per_item_bytes, 1)))


def evaluate_applies(model: nn.Module | None, images: Tensor, heatmaps: Tensor, metric: str,
                     targets: Tensor | None = None, **params) -> tuple[Tensor, Tensor]:
    """Per-image values (N,) and a bool mask (N,) of the images the metric applies to."""
    entry = METRICS.get(metric)
    fields = {k: params.pop(k) for k in list(params) if k in INPUT_FIELDS}
    table_fields = {k: fields.pop(k) for k in list(fields) if k in TABLE_FIELDS}
    entry.check_params(params)
    if images.shape[0] != heatmaps.shape[0] or images.shape[2:] != heatmaps.shape[1:]:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} do not match images {tuple(images.shape)}")
    predictions = fields.pop("predictions", None)
    if (targets is None or predictions is None) and model is not None:
        with torch.no_grad(), eval_mode(model):
            preds = _batched_predictions(model, images, table_fields.get("memory_mb", 256.0))
        predictions = preds if predictions is None else predictions
        targets = preds if targets is None else targets
    if targets is None:
        raise ValueError(f"metric '{metric}': give targets or a model")
    targets = torch.as_tensor(targets, device=images.device).long()
    if targets.shape != (images.shape[0],):
        raise ValueError(f"got {targets.numel()} targets for {images.shape[0]} images")
    with torch.no_grad(), eval_mode(model):
        # Metrics evaluate the model on many modified inputs: a folded, channels-last copy does it
        # faster, and is only used where it reproduces the model's logits.
        fast = inference_copy(model, images)[0] if model is not None and images.shape[0] else model
        table_fields.setdefault("network", model)
        context = TableContext(model=fast, **table_fields)
        inputs = MetricInputs(images, heatmaps, targets, context=context, predictions=predictions, **fields)
        out = entry.fn(inputs, **params)
    values, applies = out if isinstance(out, tuple) else (out, None)
    if applies is None:
        applies = torch.ones(values.shape, dtype=torch.bool, device=values.device)
    return values, applies


def evaluate(model: nn.Module | None, images: Tensor, heatmaps: Tensor, metric: str,
             targets: Tensor | None = None, **params) -> Tensor:
    """Per-image metric values (N,); NaN where the metric does not apply to an image.

    ``targets`` default to the model's predictions. Inputs the metric needs beyond the images and
    heatmaps (``masks``, ``reference``, ``reference_predictions``, ``fill``) go in ``params``.
    """
    values, applies = evaluate_applies(model, images, heatmaps, metric, targets, **params)
    return values.masked_fill(~applies, math.nan)


def _batched_predictions(model: nn.Module, images: Tensor, memory_mb: float) -> Tensor:
    step = chunk_size(images[0].numel() * images.element_size() * 4, memory_mb)
    return torch.cat([model(images[i:i + step]).argmax(1) for i in range(0, images.shape[0], step)])


def metrics() -> list[str]:
    """Names of the registered metrics."""
    return METRICS.names()
