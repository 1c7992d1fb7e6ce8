"""Models: architectures by name, checkpoints loaded safely, and a small trainer.

Every model takes pixel-space images in [0, 1] and normalises them itself (its first module), so
perturbations and metric substrates are defined in pixel space for every model alike.

Checkpoints are plain dicts of tensors and primitives, loaded with ``torch.load(weights_only=True)``
(no arbitrary unpickling).
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..utils import atomic_path

ARCHITECTURES = Registry("architecture")
log = logging.getLogger(__name__)


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, saved with the weights."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                     bn=nn.BatchNorm2d(c_out), relu=nn.ReLU(inplace=True)))


@ARCHITECTURES.register("small_cnn", bounds={"widths": "each int [1, inf)", "in_channels": "int [1, inf)"},
                        dims=2, default_target_layer="features.block4",
                        summary="4 conv blocks, 2 max-pools, global average pooling + linear (a CAM-able head)")
def small_cnn(n_classes: int, in_channels: int = 3, mean: list[float] | None = None,
              std: list[float] | None = None, widths: list[int] = (16, 32, 64, 64)) -> nn.Module:
    w1, w2, w3, w4 = widths
    model = nn.Sequential(OrderedDict(
        normalize=Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels),
        features=nn.Sequential(OrderedDict(
            block1=_block(in_channels, w1), pool1=nn.MaxPool2d(2),
            block2=_block(w1, w2), pool2=nn.MaxPool2d(2),
            block3=_block(w2, w3), block4=_block(w3, w4))),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(w4, n_classes),
    ))
    model.cam_fc_layer = "fc"  # the GAP + linear head that CAM (Zhou et al.) reads its weights from
    return model


def build_model(architecture: str, **params) -> nn.Module:
    """A registered architecture, or ``module:function`` (see ``external.resolve_architecture``)."""
    entry = resolve_architecture(architecture)
    entry.check_params({k: v for k, v in params.items() if k not in ("n_classes",)})
    return entry.fn(**params)


def save_checkpoint(path: str | Path, model: nn.Module, architecture: str, params: dict,
                    extra: dict | None = None) -> None:
    payload = {"format": "cambench-checkpoint-1", "architecture": architecture,
               "params": _plain(params), "state_dict": model.state_dict(), **_plain(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _plain(obj):
    """Python builtins only (NumPy scalars and tuples would not load with weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, torch.Tensor):
        return obj.item()
    return obj


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a cambench checkpoint; errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a corrupt file or one that needs unsafe unpickling
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln),
                      lines[0] if lines else type(err).__name__)
        raise ValueError(f"{path}: cannot load checkpoint with weights_only=True: {reason.strip()} "
                         f"(expected a complete file written by save_checkpoint)") from None
    if not isinstance(payload, dict) or payload.get("format") != "cambench-checkpoint-1":
        raise ValueError(f"{path}: not a cambench checkpoint (expected a dict with format 'cambench-checkpoint-1')")
    missing = [k for k in ("architecture", "params", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"{path}: not a cambench checkpoint, missing {missing} (expected the dict that "
                         f"save_checkpoint writes)")
    architecture = payload["architecture"]
    try:
        model = build_model(architecture, **payload["params"])
    except (KeyError, ValueError, TypeError) as err:  # unknown name (UnknownNameError) or parameters
        raise ValueError(f"{path}: cannot build architecture '{architecture}' with the checkpoint's params "
                         f"{payload['params']}: {err}") from None
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' holds a {type(state).__name__} (expected a dict of tensors)")
    target = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state.items()
                  if k in target and hasattr(v, "shape") and tuple(v.shape) != tuple(target[k].shape)]
    if mismatched:
        raise ValueError(f"{path}: weights do not match architecture '{architecture}': shape mismatch "
                         + ", ".join(f"'{k}' file {f} vs model {m}" for k, f, m in mismatched[:5])
                         + f" (expected the shapes of the checkpoint's params {payload['params']})")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: weights do not match architecture '{architecture}': "
                         f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model.to(map_location), payload


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), batch_size):
            correct += (model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum()
    return float(correct) / max(len(labels), 1)


def run_epochs(params: list[nn.Parameter], images: Tensor, step: Callable[[Tensor, Tensor], tuple[Tensor, dict]],
               *, epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
               before_epoch: Callable[[], None], what: str, progress=None) -> list[dict]:
    """The training loop of every trainer: AdamW, one-cycle schedule, random flips of the last axis.

    ``step(x, idx)`` returns the batch loss and per-batch sums to report. Shuffling and flips come
    from a CPU generator seeded with ``seed``, so a run is deterministic for a seed on CPU.
    """
    n = images.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(n / batch_size),
                                                pct_start=0.2)
    history = []
    for epoch in range(epochs):
        before_epoch()
        order = torch.randperm(n, generator=gen).to(images.device)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x = images[idx]
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(x.device)
            x = torch.where(flip.view((-1,) + (1,) * (x.ndim - 1)), x.flip(-1), x)
            loss, stats = step(x, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for key, value in {"loss": float(loss.detach()) * len(idx), **stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
        record = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}, "seconds": time.perf_counter() - start}
        history.append(record)
        accuracy_text = f" train acc {record['train_accuracy']:.4f}" if "train_accuracy" in record else ""
        log.info("%s epoch %d/%d loss %.4f%s", what, epoch + 1, epochs, record["loss"], accuracy_text)
        if progress is not None:
            progress.update(1)
    return history


def train_classifier(model: nn.Module, images: Tensor, labels: Tensor, *, epochs: int, batch_size: int,
                     lr: float, weight_decay: float, seed: int, progress=None) -> list[dict]:
    """AdamW with a one-cycle schedule and random flips; returns per-epoch loss and train accuracy.

    ``images`` are float pixels on the training device. Deterministic for a given seed on CPU.
    """
    def step(x: Tensor, idx: Tensor) -> tuple[Tensor, dict]:
        y = labels[idx]
        logits = model(x)
        return F.cross_entropy(logits, y), {"train_accuracy": int((logits.argmax(1) == y).sum())}

    return run_epochs(list(model.parameters()), images, step, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, seed=seed, before_epoch=model.train, what="classifier",
                      progress=progress)


from . import multi_exit  # noqa: E402,F401  (registers multi_exit_cnn)
from . import zoo  # noqa: E402,F401  (registers cifake_cnn, small_cnn3d, attention_cnn)
from .external import load_weights, resolve_architecture  # noqa: E402,F401  (registers resnet18/50, vgg16/19)
