"""The CAM engine: hooks, batching, targets, up-sampling and normalisation, owned once.

A method is a small registered function that receives a :class:`CamInputs` (activations, gradients,
target scores, logits) for a whole batch and returns either channel weights ``(N, K)`` or a signed
map ``(N, *spatial)`` at feature resolution. Everything else happens here, identically for every
method, in 2D ``(N, C, H, W)`` and 3D ``(N, C, D, H, W)``.

Gradient capture runs the trunk (everything before the target layer) without recording autograd
history; recording starts at the target layer's output, and ``torch.autograd.grad`` asks only for
the gradient of the target scores with respect to that output (never parameter gradients).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .inference import inference_copy
from .registry import Registry
from .utils import eval_mode, upsample

METHODS = Registry("method")
register_method = METHODS.register

NORM_EPS = 1e-7  # pytorch-grad-cam's epsilon in min-max normalisation (docs/methods.md §1.1)

# Bits of the per-image flag written next to every heatmap.
FLAG_CONSTANT = 1   # the map had no spread (constant before normalisation) -> stored as zeros
FLAG_NONFINITE = 2  # NaN/Inf appeared in the signed map and were replaced by 0
FLAG_NONPOSITIVE_SCORE = 4  # Ablation-CAM: target score <= 0, which its weights divide by (the map may be inverted)
# The heatmap file's per-method count attribute of each bit (store.HeatmapWriter); 1 and 2 mark degenerate maps.
FLAG_COUNTS = {FLAG_CONSTANT: "n_constant", FLAG_NONFINITE: "n_nonfinite",
               FLAG_NONPOSITIVE_SCORE: "n_nonpositive_score"}

Targets = None | Tensor | Sequence[int] | Callable[[Tensor], Tensor] | Callable[[Tensor, Tensor], Tensor]
"""What each map explains (docs/methods.md §1.2):

* ``None``: the predicted class; a tensor / sequence of N class indices: one class per image.
* ``fn(logits, image_index) -> (M,)``, a callable with two required positional parameters: the
  target score of every row of ``logits`` (M, n_classes); ``image_index`` (M,) is the position, in
  the ``images`` given to explain / explain_many, of the image each row belongs to. Perturbation
  methods (Score-CAM, Ablation-CAM, SyCAM's score terms, AME-CAM) evaluate many rows per image in
  chunks that mix images, so a target that depends on the image must read ``image_index``, e.g.
  ``lambda logits, i: logits[torch.arange(len(i)), c[i]] - logits[torch.arange(len(i)), d[i]]``.
* ``fn(logits) -> (M,)``, a callable of one argument: must be row-wise (each row's score depends on
  that row alone, e.g. ``lambda logits: logits[:, 3] - logits[:, 5]``). Checked once per batch on
  the batch's logits with the rows rotated and with a row repeated; one that fails is refused.
"""


class CamError(ValueError):
    """A user mistake in a call to the engine (layer, targets, method, input shape)."""


@dataclass
class CamInputs:
    """What a method sees: one batch, everything on the images' device.

    Besides the captured tensors, a method gets batched model evaluations (:meth:`forward`,
    :meth:`replay`), extra gradients of other scalar targets from the same forward
    (:meth:`gradient_of`), the maps of other registered methods (:meth:`method_map`) and a
    memory budget for chunking (:meth:`rows_per_chunk`). Perturbation methods stack masked
    inputs of all images and channels into rows and evaluate them in chunks: no per-image loop.
    """

    activations: Tensor            # (N, K, *spatial) output of the target layer
    gradients: Tensor | None       # d scores / d activations, same shape; None if not requested
    scores: Tensor                 # (N,) target scores the gradients were taken of (logits by default)
    logits: Tensor                 # (N, n_classes) model output
    targets: Tensor | None         # (N,) target class indices; None when the target is a callable
    images: Tensor | None = None   # (N, C, *S) the (normalised) model inputs
    layers: dict[str, tuple[Tensor, Tensor | None]] = field(default_factory=dict)  # every hooked layer
    target_fn: Callable[[Tensor, Tensor], Tensor] | None = None  # (logits (M, C), rows (M,)) -> (M,)
    session: _Session | None = field(default=None, repr=False)

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        return tuple(range(2, self.activations.ndim))

    @property
    def n(self) -> int:
        return self.activations.shape[0]

    @property
    def model(self) -> nn.Module:
        return self._session().model

    def _session(self) -> _Session:
        if self.session is None:
            raise CamError("this method needs the model; call it through cambench.explain")
        return self.session

    def target(self, logits: Tensor, rows: Tensor | None = None) -> Tensor:
        """The target score (M,) for logits of rows that belong to images ``rows`` (default: all)."""
        if rows is None:
            rows = torch.arange(logits.shape[0], device=logits.device)
        if self.target_fn is None:
            raise CamError("no target function available")
        return self.target_fn(logits, rows)

    def gradient_of(self, target_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """d target_fn(logits, rows) / d activations for the whole batch, from the same forward."""
        return self._session().gradient_of(target_fn)

    def rows_per_chunk(self, bytes_per_row: int) -> int:
        return self._session().rows_per_chunk(bytes_per_row)

    def forward(self, inputs: Tensor, chunk: int | None = None) -> Tensor:
        """Logits (M, C) of model inputs (M, C, *S), evaluated in chunks without autograd."""
        return self._session().forward(inputs, chunk)

    def input_rows_per_chunk(self) -> int:
        """Model inputs per forward for batched evaluations: from the memory budget, and on CPU
        also small enough to stay cache-friendly."""
        return self._session().input_rows_per_chunk()

    def fast_forwards(self):
        """Context in which :meth:`forward` runs the model's inference copy (Conv/BN folded,
        channels-last on CPU; ``cambench.inference``). Yields the batch images in the copy's layout,
        so that masked inputs built from them need no conversion."""
        return self._session().fast_forwards()

    def replay(self, activations: Tensor, rows: Tensor, chunk: int | None = None) -> Tensor:
        """Logits (M, C) with the target layer's output replaced by ``activations`` (M, K, *s).

        ``rows`` (M,) names the image each row belongs to. Only the part of the model after the
        target layer is recomputed when that part depends on nothing else (checked once).
        """
        return self._session().replay(activations, rows, chunk)

    def method_map(self, name: str, **params) -> Tensor:
        """Post-processed maps (N, *S) in [0, 1] of another registered method on this batch (cached)."""
        return self._session().method_map(self, name, params)[0]

    def method_raw(self, name: str, **params) -> Tensor:
        """Signed maps of another registered method on this batch (cached)."""
        return self._session().method_map(self, name, params)[1]


@dataclass
class CamResult:
    maps: dict[str, Tensor]        # method -> (N, *input_spatial) in [0, 1]
    raw: dict[str, Tensor]         # method -> (N, *feature_spatial) signed, un-normalised map
    flags: dict[str, Tensor]       # method -> (N,) uint8 bit flags (FLAG_*)
    logits: Tensor                 # (N, n_classes)
    targets: Tensor                # (N,) target class (-1 where the target was a callable)
    scores: Tensor                 # (N,) target score
    params: dict[str, dict] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)  # method -> (N, K), channel-weight methods only

    @property
    def predictions(self) -> Tensor:
        return self.logits.argmax(dim=1)


# --------------------------------------------------------------------------------------------
# Layers and targets
# --------------------------------------------------------------------------------------------

def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """A module, or a dotted name such as ``"layer4"``, ``"features.28"`` or ``"layer4.-1"``."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise CamError("target_layer is a module that is not part of the model")
        return layer
    if not isinstance(layer, str) or not layer:
        raise CamError(f"target_layer must be a module or a dotted name, got {layer!r}")
    module = model
    for part in layer.split("."):
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if not -len(module) <= idx < len(module):
                raise CamError(f"target_layer '{layer}': index {idx} out of range for a container of {len(module)}")
            module = module[idx]
        else:
            raise CamError(f"target_layer '{layer}': no submodule '{part}'; "
                           f"children here: {', '.join(children) or 'none'}")
    return module


TWO_ARGUMENT_HINT = ("write an image-dependent target as a callable of two arguments, fn(logits, image_index), "
                     "where image_index (M,) gives the image of each of the M rows of logits, e.g. "
                     "lambda logits, i: logits[torch.arange(len(i)), classes[i]]")


def takes_image_index(fn: Callable) -> bool:
    """A callable target with two required positional parameters is called as fn(logits, image_index)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: the one-argument protocol
        return False
    return sum(p.default is p.empty for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)) >= 2


class _ImageOffset:
    """A two-argument callable target seen from a batch that starts at image ``offset`` of the call."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], offset: int):
        self.fn, self.offset = fn, offset

    def __call__(self, logits: Tensor, image_index: Tensor) -> Tensor:
        return self.fn(logits, image_index + self.offset)


def _check_rowwise(call: Callable[[Tensor, Tensor], Tensor], logits: Tensor) -> None:
    """Refuse a one-argument callable whose score of a row depends on the other rows or their count:
    chunks of masked inputs mix rows of different images and have any number of rows."""
    n = logits.shape[0]
    logits = logits.detach()
    with torch.no_grad():
        base = call(logits, torch.arange(n, device=logits.device))
        scale = float(base.abs().max().clamp_min(1.0)) if base.numel() else 1.0
        rotated, repeated = torch.arange(n).roll(1), torch.cat([torch.arange(n), torch.zeros(1, dtype=torch.long)])
        for idx in ([rotated] if n > 1 else []) + [repeated]:
            idx = idx.to(logits.device)
            if not torch.allclose(call(logits[idx], idx), base[idx], rtol=1e-5, atol=1e-6 * scale, equal_nan=True):
                raise CamError("a one-argument callable target must score each row of logits on its own, but "
                               f"its value for an image changed when the {n} rows were reordered or one was "
                               f"repeated (it depends on the row's position); {TWO_ARGUMENT_HINT}")


def _target_fn(logits: Tensor, targets: Targets) -> tuple[Callable[[Tensor, Tensor], Tensor], Tensor | None]:
    """The target as a function of (logits of some rows, the image of each row), and class indices."""
    n = logits.shape[0]
    if callable(targets) and not isinstance(targets, Tensor):
        user_fn, two = targets, takes_image_index(targets)

        def call(rows_logits: Tensor, rows: Tensor) -> Tensor:
            m = rows_logits.shape[0]
            try:
                scores = user_fn(rows_logits, rows) if two else user_fn(rows_logits)
            except CamError:
                raise
            except Exception as err:  # a user function: say where it failed, and how targets are called
                how = "fn(logits, image_index)" if two else f"fn(logits); {TWO_ARGUMENT_HINT}"
                raise CamError(f"the callable target failed on logits of shape {tuple(rows_logits.shape)} "
                               f"({type(err).__name__}: {err}); it is called as {how}") from err
            if not isinstance(scores, Tensor) or scores.shape != (m,):
                hint = "" if two else f"; {TWO_ARGUMENT_HINT}"
                raise CamError(f"a callable target must return a tensor of shape ({m},) for logits of {m} rows, "
                               f"got {getattr(scores, 'shape', type(scores).__name__)}{hint}")
            return scores
        if not two:
            _check_rowwise(call, logits)
        return call, None
    if targets is None:
        idx = logits.detach().argmax(dim=1)
    else:
        idx = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
        if idx.numel() != n:
            raise CamError(f"got {idx.numel()} targets for {n} images; give one target per image")
        if (idx < 0).any() or (idx >= logits.shape[1]).any():
            raise CamError(f"target class out of range [0, {logits.shape[1]})")
    return (lambda rows_logits, rows: rows_logits.gather(1, idx[rows, None]).squeeze(1)), idx


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------

# Rough peak working memory of one forward row, in multiples of the input row's bytes; only used
# to size chunks of masked inputs from the memory budget (override with a method's batch_size).
FORWARD_MEMORY_FACTOR = 16
REPLAY_MEMORY_FACTOR = 4
# On CPU, forwards of ~8 MiB of input run fastest (measured: ResNet-18 at 224 px is ~1.3x faster
# per image at 8-16 images than at 64-128; small images prefer hundreds per forward).
CPU_CHUNK_BYTES = 8 * 2**20


class _Session:
    """Per-batch state shared by the methods: model closures, retained graph, cached maps."""

    def __init__(self, model: nn.Module, layer: nn.Module, images: Tensor, memory_mb: float):
        self.model, self.layer, self.images = model, layer, images
        self.memory_bytes = memory_mb * 2**20
        self.leaf: Tensor | None = None      # target-layer output the graph starts from
        self.logits: Tensor | None = None    # logits with the graph from ``leaf`` (if gradients)
        self.inputs: CamInputs | None = None
        self._replay_direct: bool | None = None
        self._fast: nn.Module | None = None  # inference copy, inside fast_forwards() only
        self._fast_images: Tensor | None = None
        self._maps: dict[str, tuple[Tensor, Tensor, Tensor, Tensor | None]] = {}

    def rows_per_chunk(self, bytes_per_row: int) -> int:
        return max(1, int(self.memory_bytes // max(int(bytes_per_row), 1)))

    def gradient_of(self, target_fn) -> Tensor:
        if self.leaf is None or self.logits is None or not self.logits.requires_grad:
            raise CamError("gradients were not captured for this batch")
        rows = torch.arange(self.logits.shape[0], device=self.logits.device)
        with torch.enable_grad():  # also when called under an outer no_grad (the metrics)
            scores = target_fn(self.logits, rows)
            (grads,) = torch.autograd.grad(scores.sum(), self.leaf, retain_graph=True, allow_unused=True)
        return torch.zeros_like(self.leaf) if grads is None else grads

    def input_rows_per_chunk(self) -> int:
        row = self.images[0].numel() * self.images.element_size()
        rows = self.rows_per_chunk(row * FORWARD_MEMORY_FACTOR)
        if self.images.device.type == "cpu":
            rows = min(rows, max(1, CPU_CHUNK_BYTES // row))
        return rows

    @contextlib.contextmanager
    def fast_forwards(self):
        if self._fast is not None:  # nested: the outer context already holds the copy
            yield self._fast_images
            return
        self._fast, channels_last = inference_copy(self.model, self.images, self.inputs.logits)
        self._fast_images = self.images.contiguous(memory_format=torch.channels_last) \
            if channels_last else self.images  # products of these images inherit the layout
        try:
            yield self._fast_images
        finally:
            self._fast = self._fast_images = None

    def forward(self, inputs: Tensor, chunk: int | None = None) -> Tensor:
        if inputs.shape[0] == 0:
            return inputs.new_zeros((0, self.inputs.logits.shape[1]))
        chunk = chunk or self.input_rows_per_chunk()
        model = self.model if self._fast is None else self._fast
        with torch.no_grad():
            return torch.cat([model(inputs[i:i + chunk]) for i in range(0, inputs.shape[0], chunk)])

    def _run_replaced(self, inputs: Tensor, activations: Tensor) -> Tensor:
        def replace(_module, _inputs, _output):
            return activations.clone()  # the head may work in place; the caller's tensor stays intact
        handle = self.layer.register_forward_hook(replace)
        try:
            with torch.no_grad():
                return self.model(inputs)
        finally:
            handle.remove()

    def _direct_replay_works(self) -> bool:
        """Does the model after the target layer depend on nothing but that layer's output?

        Feed a zero image of batch 1 and the real activations of the batch: if the logits come
        back unchanged, the head can be replayed without recomputing the trunk.
        """
        base = self.inputs
        try:
            logits = self._run_replaced(torch.zeros_like(self.images[:1]), base.activations)
        except RuntimeError:
            return False
        scale = base.logits.abs().max().clamp_min(1.0)
        return logits.shape == base.logits.shape and bool(
            torch.allclose(logits, base.logits, rtol=1e-4, atol=1e-5 * float(scale)))

    def replay(self, activations: Tensor, rows: Tensor, chunk: int | None = None) -> Tensor:
        if self._replay_direct is None:
            self._replay_direct = self._direct_replay_works()
        m = activations.shape[0]
        if m == 0:
            return activations.new_zeros((0, self.inputs.logits.shape[1]))
        if self._replay_direct:
            per_row = activations[0].numel() * activations.element_size() * REPLAY_MEMORY_FACTOR
            dummy = torch.zeros_like(self.images[:1])
        else:  # the trunk runs again for every row (as pytorch-grad-cam always does)
            per_row = None
        chunk = chunk or (self.rows_per_chunk(per_row) if per_row else self.input_rows_per_chunk())
        out = []
        for i in range(0, m, chunk):
            acts = activations[i:i + chunk]
            inputs = dummy if self._replay_direct else self.images[rows[i:i + chunk]]
            out.append(self._run_replaced(inputs, acts))
        return torch.cat(out)

    def method_map(self, _x: CamInputs, name: str, params: dict) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(maps, signed, flags, channel weights or None) of a registered method on the session's own
        inputs, computed once."""
        entry = METHODS.get(name)
        full = {**entry.parameters(), **params}
        key = name + repr(sorted(full.items()))
        if key not in self._maps:
            entry.check_params(params)
            signed, weights = _signed_map(entry, self.inputs, params)
            maps, flags = postprocess(signed, self.images.shape[2:], scaling_of(entry, params))
            extra = entry.meta.get("flags")  # a method's own per-image bits, e.g. Ablation-CAM's score <= 0
            if extra is not None:
                flags = flags | extra(self.inputs, full).to(torch.uint8)
            self._maps[key] = (maps, signed, flags, weights)
        return self._maps[key]


def _signed_map(entry, inputs: CamInputs, params: dict) -> tuple[Tensor, Tensor | None]:
    """The signed map at feature resolution, and the channel weights (N, K) of methods that return them."""
    out = entry.fn(inputs, **params)
    if out.ndim == 2:  # channel weights -> weighted sum of activation maps
        shape = out.shape + (1,) * len(inputs.spatial_dims)
        return (out.view(shape) * inputs.activations).sum(dim=1), out
    return out, None


def capture(model: nn.Module, images: Tensor, layer: nn.Module | str, targets: Targets = None,
            need_gradients: bool = True, extra_layers: Sequence[str] = (),
            memory_mb: float = 1024.0) -> CamInputs:
    """One forward (and one backward from the scores to the hooked layers if ``need_gradients``).

    The trunk before the first hooked layer runs without autograd history; the graph from there
    on is kept for the batch so that methods can ask for gradients of other targets.
    """
    if need_gradients and torch.is_inference_mode_enabled():  # it cannot be lifted from inside
        raise CamError("the gradient methods cannot run under torch.inference_mode(), which forbids recording "
                       "gradients; call explain under torch.no_grad() or with no grad context (the engine "
                       "records gradients only from the target layer on)")
    layer = resolve_layer(model, layer)
    names = ["<target>"] + [n for n in dict.fromkeys(extra_layers)]
    modules = [layer] + [resolve_layer(model, n) for n in names[1:]]
    seen: dict[int, Tensor] = {}

    def make_hook(i: int):
        def hook(_module, _inputs, output):
            if not isinstance(output, Tensor):
                raise CamError(f"layer '{names[i]}' returned {type(output).__name__}, expected a tensor")
            if i in seen:
                raise CamError("the target layer ran more than once in one forward pass; choose a "
                               "module that is called once (e.g. a block, not a shared ReLU)")
            if not need_gradients:
                # A copy: in-place ops after the layer (ReLU(inplace), a residual `out += identity`)
                # rewrite the output tensor itself, and every method reads ours later.
                seen[i] = output.detach().clone()
                return None
            # Start recording at the first hooked layer: the trunk ran without history.
            torch.set_grad_enabled(True)
            tensor = output if output.requires_grad else output.detach().requires_grad_(True)
            seen[i] = tensor
            return tensor.clone()  # in-place ops after the layer (ReLU(inplace)) must not touch ours
        return hook

    handles = []
    try:
        for i, module in enumerate(modules):
            handles.append(module.register_forward_hook(make_hook(i)))
        with torch.no_grad():  # the hooks re-enable recording from the first hooked layer on
            logits = model(images)
    finally:
        for h in handles:
            h.remove()
    missing = [names[i] for i in range(len(modules)) if i not in seen]
    if missing:
        what = "the target layer" if missing[0] == "<target>" else f"layer(s) {missing}"
        raise CamError(f"{what} was not called during the forward pass")
    target_fn, idx = _target_fn(logits, targets)
    rows = torch.arange(logits.shape[0], device=logits.device)
    with torch.enable_grad() if need_gradients else torch.no_grad():
        scores = target_fn(logits, rows)
    tensors = [seen[i] for i in range(len(modules))]
    grads: list[Tensor | None] = [None] * len(tensors)
    if need_gradients:
        if not scores.requires_grad:
            raise CamError("the target score does not depend on the target layer")
        # Images are independent in eval mode, so the gradient of the sum is per-image.
        with torch.enable_grad():  # an outer no_grad (the metrics re-explaining) must not drop the sum's graph
            got = torch.autograd.grad(scores.sum(), tensors, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, got)]
    session = _Session(model, layer, images, memory_mb)
    if need_gradients:
        session.leaf, session.logits = tensors[0], logits
    inputs = CamInputs(tensors[0].detach(), grads[0], scores.detach(), logits.detach(),
                       None if idx is None else idx.detach(), images,
                       {n: (t.detach(), g) for n, t, g in zip(names[1:], tensors[1:], grads[1:])},
                       target_fn, session)
    session.inputs = inputs
    return inputs


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------

def _minmax(maps: Tensor, eps: float = NORM_EPS) -> tuple[Tensor, Tensor]:
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    shape = (-1,) + (1,) * (maps.ndim - 1)
    out = (maps - lo.view(shape)) / (hi - lo + eps).view(shape)
    return out, (hi - lo) <= eps


def _maxscale(maps: Tensor, eps: float = NORM_EPS) -> tuple[Tensor, Tensor]:
    """Non-negative maps divided by their max (no min subtracted); constant maps become 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    constant = (hi - lo) <= eps
    shape = (-1,) + (1,) * (maps.ndim - 1)
    out = maps / torch.where(hi > 0, hi, torch.ones_like(hi)).view(shape)
    return out.masked_fill(constant.view(shape), 0.0), constant


SCALINGS = ("minmax", "max")


def scaling_of(entry, params: Mapping) -> str:
    """A method's final scaling: its registration's ``scaling`` ('minmax' when undeclared, or a
    function of the parameters), e.g. CF-CAM's code divides by the max."""
    return entry.declared("scaling", params, "minmax")


def postprocess(signed: Tensor, size: Sequence[int], scaling: str = "minmax") -> tuple[Tensor, Tensor]:
    """ReLU -> min-max at feature resolution -> (bi/tri)linear up-sampling -> min-max.

    The last min-max makes every non-constant map span exactly [0, 1]; it equals pytorch-grad-cam's
    output (which normalises, resizes, and normalises again when it aggregates layers).
    ``scaling`` 'max' divides by the max instead of min-max (both times; up-sampling is linear, so
    this is the up-sampled ReLU map divided by its max, the floor kept). Constant maps become 0 in both.
    Returns the maps and uint8 flags.
    """
    if scaling not in SCALINGS:
        raise CamError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    scale = _minmax if scaling == "minmax" else _maxscale
    finite = torch.isfinite(signed).flatten(1).all(dim=1)
    signed = torch.nan_to_num(signed, nan=0.0, posinf=0.0, neginf=0.0)
    maps, constant = scale(signed.clamp_min(0))
    maps = upsample(maps.unsqueeze(1), size).squeeze(1)
    maps, _ = scale(maps)
    flags = constant.to(torch.uint8) * FLAG_CONSTANT + (~finite).to(torch.uint8) * FLAG_NONFINITE
    return maps.clamp_(0, 1), flags


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

def method_of(label: str, params: Mapping) -> tuple[str, dict]:
    """A spec entry ``label: {method: name, ...}`` runs method ``name`` under ``label`` (so one
    method can run with several settings); without ``method`` the label is the method's name."""
    params = dict(params or {})
    return params.pop("method", label), params


def method_applies(label: str, params: Mapping, model: nn.Module) -> bool:
    """Whether a method can run on this model at all (e.g. CAM needs a GAP + linear head, AME-CAM a
    multi-exit model); methods without an ``applies`` rule run on every model."""
    name, params = method_of(label, params)
    applies = METHODS.get(name).meta.get("applies")
    return applies is None or bool(applies(model, params))


def normalise_method_spec(methods: str | Sequence[str] | Mapping[str, Mapping | None]) -> dict[str, dict]:
    if isinstance(methods, str):
        methods = [methods]
    spec = {m: {} for m in methods} if not isinstance(methods, Mapping) else \
        {m: dict(p or {}) for m, p in methods.items()}
    if not spec:
        raise CamError("no CAM method given")
    for label, params in spec.items():
        name, params = method_of(label, params)
        try:
            METHODS.get(name).check_params(params)
        except ValueError as err:
            raise CamError(f"method '{label}': {err}") from None
    return spec


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim not in (4, 5):
        raise CamError("images must be a tensor (N, C, H, W) or (N, C, D, H, W), "
                       f"got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise CamError(f"images must be floating point, got {images.dtype}")


def _requirements(spec: dict[str, dict]) -> tuple[bool, list[str]]:
    """Whether any method needs gradients, and the extra layers the methods ask for."""
    need_grad, layers = False, []
    for label, params in spec.items():
        name, params = method_of(label, params)
        entry = METHODS.get(name)
        need_grad |= bool(entry.declared("needs_gradients", params, True))
        extra = entry.meta.get("extra_layers")
        if extra is not None:
            layers += list(extra({**entry.parameters(), **params}))
    return need_grad, layers


def method_terms(model: nn.Module, images: Tensor, label: str, params: Mapping | None,
                 target_layer: nn.Module | str, targets: Targets = None,
                 memory_mb: float = 1024.0) -> tuple[CamInputs, Tensor | None, Tensor]:
    """What one method makes of a batch before post-processing: the captured inputs, its channel
    weights ``(N, K)`` (None for methods that return a map directly) and its signed map at feature
    resolution. Used by the axiom metrics, which need the linear decomposition sum_k w_k A^k."""
    _check_images(images)
    spec = normalise_method_spec({label: params})
    need_grad, extra_layers = _requirements(spec)
    name, method_params = method_of(label, params or {})
    entry = METHODS.get(name)
    with eval_mode(model):
        inputs = capture(model, images, target_layer, targets, need_grad, extra_layers, memory_mb)
        signed, weights = _signed_map(entry, inputs, method_params)
    return inputs, weights, signed


def explain_many(model: nn.Module, images: Tensor, methods, target_layer: nn.Module | str,
                 targets: Targets = None, batch_size: int | None = None,
                 memory_mb: float = 1024.0) -> CamResult:
    """Heatmaps of several methods from one forward/backward per batch.

    ``memory_mb`` bounds the chunks in which perturbation methods evaluate masked inputs.
    """
    _check_images(images)
    spec = normalise_method_spec(methods)
    layer = resolve_layer(model, target_layer)
    need_grad, extra_layers = _requirements(spec)
    for name in extra_layers:
        resolve_layer(model, name)  # a bad name fails before any computation
    n = images.shape[0]
    if targets is not None and not callable(targets):
        targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
        if targets.numel() != n:
            raise CamError(f"got {targets.numel()} targets for {n} images; give one target per image")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise CamError(f"batch_size must be a positive integer (images per forward), got {batch_size!r}")
    step = batch_size or n
    parts: list[CamResult] = []
    with eval_mode(model):
        for start in range(0, n, step):
            batch = images[start:start + step]
            tb = targets[start:start + step] if isinstance(targets, Tensor) else targets
            if callable(tb) and not isinstance(tb, Tensor) and takes_image_index(tb) and start:
                tb = _ImageOffset(tb, start)  # image_index counts from the first image of the call
            inputs = capture(model, batch, layer, tb, need_grad, extra_layers, memory_mb)
            maps, raw, flags, weights = {}, {}, {}, {}
            for label, params in spec.items():
                maps[label], raw[label], flags[label], w = inputs.session.method_map(
                    inputs, *method_of(label, params))
                if w is not None:
                    weights[label] = w
            idx = inputs.targets if inputs.targets is not None else \
                torch.full((batch.shape[0],), -1, device=batch.device, dtype=torch.long)
            parts.append(CamResult(maps, raw, flags, inputs.logits, idx, inputs.scores, weights=weights))
            del inputs  # frees the retained graph before the next batch
    cat = lambda key: {m: torch.cat([getattr(p, key)[m] for p in parts]) for m in spec}  # noqa: E731
    weighted = [m for m in spec if all(m in p.weights for p in parts)]
    return CamResult(cat("maps"), cat("raw"), cat("flags"),
                     torch.cat([p.logits for p in parts]), torch.cat([p.targets for p in parts]),
                     torch.cat([p.scores for p in parts]), params=spec,
                     weights={m: torch.cat([p.weights[m] for p in parts]) for m in weighted})


def explain(model: nn.Module, images: Tensor, method: str, target_layer: nn.Module | str,
            targets: Targets = None, batch_size: int | None = None, memory_mb: float = 1024.0,
            **params) -> Tensor:
    """Heatmaps ``(N, *spatial)`` in [0, 1] on the images' device for one registered method."""
    return explain_many(model, images, {method: params}, target_layer, targets, batch_size,
                        memory_mb).maps[method]


def methods() -> list[str]:
    """Names of the registered CAM methods."""
    return METHODS.names()
