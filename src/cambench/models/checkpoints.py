"""Models by name and cambench checkpoints.

Checkpoints are plain dicts of tensors and primitives, loaded with ``torch.load(weights_only=True)``
(no arbitrary unpickling).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..utils import atomic_path
from .external import resolve_architecture


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
