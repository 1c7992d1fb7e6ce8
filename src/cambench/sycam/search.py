"""SyCAM's search: bottom-up enumeration of expressions by size, observational-equivalence pruning, and
a registered metric as the quality oracle (docs/methods.md §2.14, our reading).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..engine import CamError, capture, postprocess, resolve_layer
from ..utils import eval_mode
from .grammar import (
    BINARY_OPS,
    COMMUTATIVE,
    DEFAULT_CONSTANTS,
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
)
from .terminals import BINARY_FNS, UNARY_FNS, TerminalSet, evaluate_tree

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
        from ..metrics import evaluate_applies
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
    from ..metrics import METRICS
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


class _Search:
    """The state of one bottom-up search: the distinct building blocks by size with their weights on
    the sample batch, the fingerprints seen so far, what was pruned, and the scored table."""

    def __init__(self, data: _Data, scorer: _Scorer, fingerprint: _Fingerprinter, constants: list[float],
                 terminals: list[str], operators: list[str], memory_mb: float):
        self.data, self.scorer, self.fingerprint = data, scorer, fingerprint
        self.constants, self.terminals = constants, terminals
        self.unary = [o for o in operators if o in UNARY_OPS]
        self.binary = [o for o in operators if o in BINARY_OPS]
        n_s, k = data.n_sample, data.activations.shape[1]
        self.like = data.activations.new_zeros((n_s, k))
        self.sample_is_all = n_s == data.images.shape[0]
        self.gen_chunk = max(1, int(memory_mb * 2 ** 20 // (n_s * k * 8 * 6)))  # candidates built at once
        self.pool: dict[int, list[Expr]] = {}          # distinct building blocks by size
        self.pool_w: dict[int, Tensor] = {}            # their weights on the sample, (M, n_s, K)
        self.constant_only: dict[int, list[bool]] = {}  # members without a terminal
        self.exact_seen: dict[tuple, str] = {}
        self.shape_seen: dict[tuple, str] = {}
        self.pruned: dict[str, str] = {}
        self.table: list[tuple[str, int, float]] = []
        self.stopped = "max_size"

    def full_weights(self, size: int, idx: list[int]) -> Tensor:
        """Weights (len(idx), N, K) of pool members on every image (the pool holds the sample's)."""
        if self.sample_is_all:
            return self.pool_w[size][idx]
        data = self.data
        full_like = data.activations.new_zeros(data.activations.shape[:2])
        return torch.stack([torch.broadcast_to(evaluate_tree(self.pool[size][i], data.terminals.__getitem__,
                                                             full_like), full_like.shape) for i in idx])

    def candidates(self, size: int) -> Iterator[tuple[list[Expr], Tensor]]:
        """(expressions, their sample weights) in chunks, for every candidate of one size."""
        pool, pool_w, constant_only = self.pool, self.pool_w, self.constant_only
        if size == 1:
            exprs = [Const(c) for c in self.constants] + [Terminal(t) for t in self.terminals]
            n_s = self.data.n_sample
            yield exprs, torch.stack([torch.broadcast_to(
                evaluate_tree(e, lambda t: self.data.terminals[t][:n_s], self.like), self.like.shape) for e in exprs])
            return
        for op in self.unary:
            src = [i for i, const in enumerate(constant_only.get(size - 1, [])) if not const]
            for at in range(0, len(src), self.gen_chunk):
                idx = src[at:at + self.gen_chunk]
                yield [Unary(op, pool[size - 1][i]) for i in idx], UNARY_FNS[op](pool_w[size - 1][idx])
        for op in self.binary:
            for ls in range(1, size - 1):
                rs = size - 1 - ls
                if op in COMMUTATIVE and ls > rs:
                    continue
                left, right = pool.get(ls, []), pool.get(rs, [])
                left_const, right_const = constant_only.get(ls, []), constant_only.get(rs, [])
                pairs = [(i, j) for i in range(len(left)) for j in range(len(right))
                         if not (op in COMMUTATIVE and ls == rs and i > j)
                         and not (left_const[i] and right_const[j])]
                for at in range(0, len(pairs), self.gen_chunk):
                    chunk = pairs[at:at + self.gen_chunk]
                    li, ri = [p[0] for p in chunk], [p[1] for p in chunk]
                    yield ([Binary(op, left[i], right[j]) for i, j in chunk],
                           BINARY_FNS[op](pool_w[ls][li], pool_w[rs][ri]))

    def grow(self, size: int, budget: _Budget) -> tuple[list[Expr], list[int]]:
        """Enumerate one size: keep the candidates with new weights (exact fingerprint) as building
        blocks, and mark those with new maps (fingerprint up to a positive factor) for scoring."""
        new_exprs, new_w, to_score = [], [], []
        # Candidates are built lazily: a chunk's weights are computed only if the budget allows.
        chunks = self.candidates(size)
        while True:
            if size > 1 and budget.exhausted():
                if next(chunks, None) is not None:
                    self.stopped = "time_budget"
                break
            chunk = next(chunks, None)
            if chunk is None:
                break
            exprs, w = chunk
            shape_keys, exact_keys = self.fingerprint(w)
            keep = []
            for i, (e, sk, ek) in enumerate(zip(exprs, shape_keys, exact_keys)):
                text = format_expression(e)
                if ek in self.exact_seen:
                    self.pruned[text] = self.exact_seen[ek]
                    continue
                self.exact_seen[ek] = text
                keep.append(i)
                if sk in self.shape_seen:
                    self.pruned[text] = self.shape_seen[sk]
                else:
                    self.shape_seen[sk] = text
                    to_score.append(len(new_exprs) + len(keep) - 1)
            new_exprs += [exprs[i] for i in keep]
            if keep:
                new_w.append(w[keep])
        if new_exprs:
            self.pool[size] = new_exprs
            self.constant_only[size] = [e.constant_only for e in new_exprs]
            self.pool_w[size] = torch.cat(new_w)
        return new_exprs, to_score

    def score(self, size: int, exprs: list[Expr], to_score: list[int], budget: _Budget) -> None:
        """Score one size's distinct candidates, in groups of whole images."""
        group = max(1, self.scorer.rows // max(self.data.images.shape[0], 1))
        for at in range(0, len(to_score), group):
            idx = to_score[at:at + group]
            # Size 1 is always scored in full, so that there is a result whatever the budget.
            scores = self.scorer(self.full_weights(size, idx), None if size == 1 else budget)
            if scores is None:
                self.stopped = "time_budget"
                return
            self.table += [(format_expression(exprs[i]), size, s) for i, s in zip(idx, scores)]

    def run(self, max_size: int, budget: _Budget) -> None:
        with torch.no_grad():
            for size in range(1, max_size + 1):
                exprs, to_score = self.grow(size, budget)
                self.score(size, exprs, to_score, budget)
                if self.stopped == "time_budget":
                    return


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
    search = _Search(data, _Scorer(model, data, metric, metric_params, masks, memory_mb, seed),
                     _Fingerprinter(data.n_sample, data.activations.shape[1], images.device, seed),
                     constants, terminals, operators, memory_mb)
    search.run(max_size, budget)

    scored = [row for row in search.table if not math.isnan(row[2])]
    if not scored:
        raise CamError(f"synthesise: no candidate could be scored (metric '{metric}' applied to no image"
                       + (" before the time budget ran out)" if search.stopped == "time_budget" else ")"))
    sign = -1.0 if maximise else 1.0
    best = min(scored, key=lambda row: (sign * row[2], row[1], row[0]))
    return SynthesisResult(best[0], best[2], search.table, metric, maximise, search.pruned, search.stopped,
                           budget.elapsed)
