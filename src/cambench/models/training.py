"""The trainer every model shares: AdamW, a one-cycle schedule, random flips."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


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
