"""Multi-exit CNN with an attentive exit aggregator: the trained architecture behind AME-CAM.

docs/methods.md §2.15 (Chen, Hu, Shi, Ho; MICCAI 2023; code ``windstormer/AME-CAM``). One module holds
everything AME-CAM needs, so one cambench checkpoint stores it:

* a small_cnn-like backbone of L stages (conv 3x3 + BN + ReLU each, 2x max-pool before the first
  ``pools`` stages after the first), 2D or 3D;
* an exit head after every stage: a 1x1 conv ``C_l -> n_classes``. GAP over its output gives the exit
  logits. The paper's exits have one channel (tumour vs normal, BCE); ours have one channel per
  class and are trained with cross-entropy -- **our generalisation** to n classes: the exit map
  ``M_l`` of an image is the channel of its target class;
* the attention aggregator (``Res_Scoring`` in the code): on the L channels ``I_g * Norm(M_l)``
  three 3x3 conv(32)+BN+ReLU and one 3x3 conv(L)+BN+ReLU, a softmax over the L channels gives
  ``W_l``, and ``M_AME = sum_l W_l * M_l`` on the raw (un-normalised) exit maps.

``forward`` returns the deepest exit's logits, so for the engine and the metrics the model is an
ordinary classifier; ``stages.-1`` (the last stage) is its default target layer. CAM (Zhou et al.)
does not apply: the head is a 1x1 conv, and the model has no ``cam_fc_layer``.

Training is two-phase, as in the code: :func:`train_multi_exit` (exit losses
``sum_l lambda_l CE(logits_l, y)``), then :func:`train_aggregator` (backbone and exits frozen,
the contrastive loss of §2.15 step 4, :func:`contrastive_loss`). :func:`fit_multi_exit` runs both
with the signature of ``train_classifier``.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import upsample
from .base import ARCHITECTURES, Normalize
from .training import run_epochs

NORM_OFFSET = 1e-5   # the code's min-max: (M - min + 1e-5) / (max - min + 1e-5)
COS_CLAMP = (0.0005, 0.9995)  # the code clamps every cosine similarity into this range
RANK_ALPHA = 0.25    # rank temperature of SimMax: weight exp(-0.25 * rank)

_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)}


def _conv_bn_relu(dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, bn, _ = _LAYERS[dims]
    return nn.Sequential(OrderedDict(conv=conv(c_in, c_out, 3, padding=1, bias=False),
                                     bn=bn(c_out), relu=nn.ReLU(inplace=True)))


def offset_minmax(maps: Tensor) -> Tensor:
    """Per-map min-max over the spatial axes of (N, L, *S), with the code's 1e-5 offset."""
    flat = maps.flatten(2)
    lo = flat.min(dim=2).values
    hi = flat.max(dim=2).values
    shape = maps.shape[:2] + (1,) * (maps.ndim - 2)
    return (maps - lo.view(shape) + NORM_OFFSET) / (hi - lo + NORM_OFFSET).view(shape)


class ExitAggregator(nn.Module):
    """Per-pixel softmax weights over the L exit maps (the code's ``Res_Scoring``)."""

    def __init__(self, n_exits: int, dims: int = 2, width: int = 32):
        super().__init__()
        conv, bn, _ = _LAYERS[dims]
        layers, c_in = [], n_exits
        for c_out in (width, width, width, n_exits):
            layers += [conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU()]
            c_in = c_out
        self.att = nn.Sequential(*layers)

    def forward(self, gray: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``gray`` (N, 1, *S) channel mean of the input, ``maps`` (N, L, *S) raw exit maps.

        Returns ``M_AME`` (N, *S) and the weights ``W`` (N, L, *S), which sum to 1 at every pixel.
        """
        weights = self.att(gray * offset_minmax(maps)).softmax(dim=1)
        return (weights * maps).sum(dim=1), weights


class MultiExitCNN(nn.Module):
    """Backbone of stages, one exit per stage, and the exit aggregator; see the module docstring."""

    def __init__(self, n_classes: int, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64, 64),
                 dims: int = 2, pools: int = 2, mean: list[float] | None = None,
                 std: list[float] | None = None, aggregator_width: int = 32):
        super().__init__()
        if dims not in _LAYERS:
            raise ValueError(f"multi_exit_cnn: dims must be 2 or 3, got {dims!r}")
        widths = [int(w) for w in widths]
        if len(widths) < 1 or min(widths) < 1:
            raise ValueError(f"multi_exit_cnn: widths must be a non-empty list of positive ints, got {widths}")
        if n_classes < 2:
            raise ValueError(f"multi_exit_cnn: n_classes must be >= 2 (cross-entropy exits), got {n_classes}")
        self.dims, self.n_classes = dims, n_classes
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        pool = _LAYERS[dims][2]
        stages, c_in = OrderedDict(), in_channels
        for i, width in enumerate(widths):
            block = _conv_bn_relu(dims, c_in, width)
            # small_cnn's layout: max-pool before stages 2 .. pools+1, so the later exits are coarser.
            stages[f"stage{i + 1}"] = nn.Sequential(pool(2), block) if 1 <= i <= pools else block
            c_in = width
        self.stages = nn.Sequential(stages)
        conv = _LAYERS[dims][0]
        self.exits = nn.ModuleList(conv(w, n_classes, 1) for w in widths)
        self.aggregator = ExitAggregator(len(widths), dims, aggregator_width)
        # Set by train_aggregator; saved in the checkpoint so AME-CAM can refuse an untrained aggregator.
        self.register_buffer("aggregator_trained", torch.zeros((), dtype=torch.uint8))

    @property
    def n_exits(self) -> int:
        return len(self.exits)

    def stage_features(self, images: Tensor) -> list[Tensor]:
        feats, h = [], self.normalize(images)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def _logits(self, exit_head: nn.Module, feat: Tensor) -> Tensor:
        # GAP of a 1x1 conv's output = the 1x1 conv of the GAP (it is affine): pool first, it is cheaper.
        pooled = feat.mean(dim=tuple(range(2, feat.ndim)), keepdim=True)
        return exit_head(pooled).flatten(1)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (N, n_classes) of the deepest exit."""
        return self._logits(self.exits[-1], self.stage_features(images)[-1])

    def exit_logits(self, images: Tensor) -> Tensor:
        """Logits of every exit, (N, L, n_classes), shallow to deep."""
        feats = self.stage_features(images)
        return torch.stack([self._logits(head, f) for head, f in zip(self.exits, feats)], dim=1)

    def exit_outputs(self, images: Tensor) -> list[Tensor]:
        """Full exit maps of every class at each exit's own resolution: L tensors (N, n_classes, *s_l)."""
        return [head(f) for head, f in zip(self.exits, self.stage_features(images))]

    def exit_maps(self, images: Tensor, targets: Tensor) -> Tensor:
        """The target class's exit maps, up-sampled to input size: (N, L, *S), raw (logit scale)."""
        targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
        maps = []
        for out in self.exit_outputs(images):
            index = targets.view((-1, 1) + (1,) * (out.ndim - 2)).expand((-1, 1) + out.shape[2:])
            maps.append(upsample(out.gather(1, index), images.shape[2:]))  # align_corners=False, as the code
        return torch.cat(maps, dim=1)

    def aggregate(self, images: Tensor, maps: Tensor) -> tuple[Tensor, Tensor]:
        """``M_AME`` (N, *S) and weights (N, L, *S) from pixel images and raw exit maps (N, L, *S)."""
        gray = images.mean(dim=1, keepdim=True)  # I_g: channel mean of the [0, 1] pixels, as the code's input
        return self.aggregator(gray, maps)

    def ame_maps(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(exit maps (N, L, *S), M_AME (N, *S), weights (N, L, *S)) for the given target classes."""
        maps = self.exit_maps(images, targets)
        ame, weights = self.aggregate(images, maps)
        return maps, ame, weights


# --------------------------------------------------------------------------------------------
# Contrastive loss of the aggregator (docs/methods.md §2.15 step 4; the code's loss.py)
# --------------------------------------------------------------------------------------------

def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``, clamped as in the code."""
    return (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp(*COS_CLAMP)


def sim_max(embedded: Tensor, rank_alpha: float = RANK_ALPHA) -> Tensor:
    """Pull the rows of one set together: mean of ``-log(cos) * exp(-alpha * (rank - 1))``.

    Our reading of the code's ``SimMaxLoss``: for every row i the similarities to all rows j of
    the batch (i itself included) are ranked in descending order (0 = most similar) and the
    code's ``rank - 1`` is kept, so i's own pair (cos clamped to 0.9995, normally first) gets
    rank -1 and the nearest other row rank 0, weight 1. The mean runs over all N x N pairs.
    The ranks are not differentiated.
    """
    sim = _cosine(embedded, embedded)
    loss = -torch.log(sim)
    order = sim.detach().argsort(dim=1, descending=True)
    rank = order.argsort(dim=1) - 1
    return (loss * torch.exp(-rank_alpha * rank.to(loss.dtype))).mean()


def sim_min(foreground: Tensor, background: Tensor) -> Tensor:
    """Push foreground and background apart: mean of ``-log(1 - cos)`` over all (bg, fg) pairs."""
    return (-torch.log(1 - _cosine(background, foreground))).mean()


def contrastive_loss(images: Tensor, ame: Tensor, rank_alpha: float = RANK_ALPHA) -> tuple[Tensor, dict]:
    """``SimMax(F) + SimMin(F, Bg) + SimMax(Bg)`` with ``F = vec(I_g M_AME)``, ``Bg = vec(I_g (1 - M_AME))``.

    ``ame`` is the raw (not normalised) aggregated map, as in the code. The similarities are
    between the images of the batch, so the loss of a batch depends on its composition.
    """
    gray = images.mean(dim=1)
    fg = (gray * ame).flatten(1)
    bg = (gray * (1 - ame)).flatten(1)
    parts = {"simmax_foreground": sim_max(fg, rank_alpha), "simmin": sim_min(fg, bg),
             "simmax_background": sim_max(bg, rank_alpha)}
    return sum(parts.values()), parts


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _check_multi_exit(model: nn.Module) -> MultiExitCNN:
    if not isinstance(model, MultiExitCNN):
        raise TypeError(f"expected a multi_exit_cnn model (MultiExitCNN), got {type(model).__name__}")
    return model


def _check_training(epochs: int, batch_size: int, lr: float) -> None:
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def _device(model: nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _lambdas(lambdas: Sequence[float] | None, n_exits: int) -> Tensor:
    if lambdas is None:  # 0.25 ... 1.0 from shallow to deep: the code's [0.25, 0.5, 0.75, 1.0] for 4 exits
        return torch.linspace(0.25, 1.0, n_exits) if n_exits > 1 else torch.ones(1)
    weights = torch.as_tensor(list(lambdas), dtype=torch.float32)
    if weights.shape != (n_exits,) or (weights < 0).any():
        raise ValueError(f"lambdas must hold {n_exits} non-negative weights (one per exit), got {list(lambdas)}")
    return weights


def train_multi_exit(model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int, batch_size: int,
                     lr: float, weight_decay: float = 0.0, seed: int = 0, device=None,
                     lambdas: Sequence[float] | None = None, progress=None) -> list[dict]:
    """Phase 1: backbone and exits with ``sum_l lambda_l CE(exit logits_l, y)``.

    ``lambdas`` default: evenly spaced from 0.25 (shallowest) to 1.0 (deepest), the code's
    [0.25, 0.5, 0.75, 1.0] for four exits. Cross-entropy replaces the code's BCE (our n-class
    generalisation). The aggregator is not touched. Returns per-epoch loss, deepest-exit train
    accuracy and per-exit train accuracies (``accuracy_exit<l>``).
    """
    model = _check_multi_exit(model)
    _check_training(epochs, batch_size, lr)
    dev = _device(model, device)
    model.to(dev)
    images, labels = images.to(dev), torch.as_tensor(labels).long().to(dev)
    weights = _lambdas(lambdas, model.n_exits).to(dev)
    params = [p for name, p in model.named_parameters() if not name.startswith("aggregator.")]
    model.aggregator_trained.fill_(0)  # new exits: an aggregator trained on the old ones no longer fits

    def step(x: Tensor, idx: Tensor) -> tuple[Tensor, dict]:
        y = labels[idx]
        logits = model.exit_logits(x)                                   # (B, L, n_classes)
        per_exit = torch.stack([F.cross_entropy(logits[:, e], y) for e in range(model.n_exits)])
        correct = (logits.detach().argmax(2) == y[:, None]).sum(0)
        stats = {f"accuracy_exit{e + 1}": int(correct[e]) for e in range(model.n_exits)}
        stats["train_accuracy"] = int(correct[-1])
        return (weights * per_exit).sum(), stats

    def before_epoch() -> None:
        model.train()

    history = run_epochs(params, images, step, epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, before_epoch=before_epoch,
                          what="multi-exit", progress=progress)
    model.eval()
    return history


def _aggregation_targets(model: MultiExitCNN, images: Tensor, labels: Tensor | None) -> Tensor:
    if labels is not None:
        return torch.as_tensor(labels).long().to(images.device)
    with torch.no_grad():
        return torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, images.shape[0], 256)])


def train_aggregator(model: nn.Module, images: Tensor, labels: Tensor | None = None, *, epochs: int,
                     batch_size: int, lr: float, weight_decay: float = 1e-5, seed: int = 0, device=None,
                     rank_alpha: float = RANK_ALPHA, progress=None) -> list[dict]:
    """Phase 2: the aggregator alone, backbone and exits frozen (eval mode), contrastive loss.

    No pixel labels are used. The exit maps aggregated are those of class ``labels`` when given,
    else of the deepest exit's prediction (the class the engine explains by default) -- our
    reading for n classes (the code has a single tumour channel). Marks the aggregator trained.
    Returns per-epoch loss and its three parts.
    """
    model = _check_multi_exit(model)
    _check_training(epochs, batch_size, lr)
    dev = _device(model, device)
    model.to(dev)
    images = images.to(dev)
    model.eval()
    classes = _aggregation_targets(model, images, labels)
    if classes.shape != (images.shape[0],):
        raise ValueError(f"got {classes.numel()} labels for {images.shape[0]} images")
    frozen = [p for name, p in model.named_parameters() if not name.startswith("aggregator.")]
    flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)

    def step(x: Tensor, idx: Tensor) -> tuple[Tensor, dict]:
        with torch.no_grad():
            maps = model.exit_maps(x, classes[idx])
        ame, _ = model.aggregate(x, maps)
        loss, parts = contrastive_loss(x, ame, rank_alpha)
        return loss, {k: float(v.detach()) * len(idx) for k, v in parts.items()}

    def before_epoch() -> None:
        model.eval()
        model.aggregator.train()

    try:
        history = run_epochs(list(model.aggregator.parameters()), images, step, epochs=epochs,
                              batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
                              before_epoch=before_epoch, what="aggregator", progress=progress)
    finally:
        for p, flag in zip(frozen, flags):
            p.requires_grad_(flag)
        model.eval()
    model.aggregator_trained.fill_(1)
    return history


@torch.no_grad()
def aggregator_loss(model: nn.Module, images: Tensor, labels: Tensor | None = None, *, batch_size: int = 64,
                    rank_alpha: float = RANK_ALPHA) -> float:
    """Mean contrastive loss in eval mode over consecutive batches (no shuffling, no flips)."""
    model = _check_multi_exit(model)
    model.eval()
    classes = _aggregation_targets(model, images, labels)
    total = 0.0
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        _, ame, _ = model.ame_maps(x, classes[i:i + batch_size])
        total += float(contrastive_loss(x, ame, rank_alpha)[0]) * x.shape[0]
    return total / images.shape[0]


def fit_multi_exit(model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int, batch_size: int,
                   lr: float, weight_decay: float, seed: int, progress=None,
                   aggregator_epochs: int | None = None, aggregator_lr: float | None = None) -> list[dict]:
    """Both phases with ``train_classifier``'s signature (for a trainer that only knows that one).

    The aggregator trains for ``aggregator_epochs`` (default: ``epochs``) at ``aggregator_lr``
    (default: ``lr``) on the same images, its maps taken for the true labels. The history has
    the multi-exit epochs followed by the aggregator epochs (``phase`` names each).
    """
    history = [{"phase": "multi_exit", **h} for h in train_multi_exit(
        model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        seed=seed, progress=progress)]
    history += [{"phase": "aggregator", **h} for h in train_aggregator(
        model, images, labels, epochs=aggregator_epochs or epochs, batch_size=batch_size,
        lr=aggregator_lr or lr, seed=seed, progress=progress)]
    return history


@ARCHITECTURES.register("multi_exit_cnn", bounds={"widths": "each int [1, inf)", "in_channels": "int [1, inf)"},
                        default_target_layer="stages.-1", trainer=fit_multi_exit,
                        summary="AME-CAM's multi-exit CNN: an exit (1x1 conv + GAP) after each stage and "
                                "an attention aggregator of the exit maps; the deepest exit is the output")
def multi_exit_cnn(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
                   std: list[float] | None = None, widths: list[int] = (16, 32, 64, 64), dims: int = 2,
                   pools: int = 2, aggregator_width: int = 32) -> nn.Module:
    return MultiExitCNN(n_classes, in_channels, widths, dims, pools, mean, std, aggregator_width)
