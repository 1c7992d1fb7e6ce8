"""Small shared helpers: eval mode, up-sampling, devices, atomic file writes, JSON attributes."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}  # by the number of spatial axes


@contextlib.contextmanager
def eval_mode(model: nn.Module | None):
    """Eval mode for the duration; each module's own train flag restored afterwards (also on error)."""
    if model is None:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def upsample(maps: Tensor, size, align_corners: bool = False) -> Tensor:
    """(N, C, *s) -> (N, C, *size): linear, bilinear or trilinear interpolation by the spatial axes."""
    return F.interpolate(maps, size=tuple(size), mode=_INTERPOLATION[maps.ndim - 2], align_corners=align_corners)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first visible CUDA device if any, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available")
    return device


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left (``.<name>.tmp-<pid>`` of a process that is gone).

    A SIGKILL leaves no chance to clean up; no two jobs write the same file, so a temporary of a
    dead process is garbage. One of a live process (a writer on another node of a shared file
    system may share a pid) is left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or kill mid-write leaves the final path absent (never a partial file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_attribute(attrs, key: str, path: str | os.PathLike, expected: type, default=None):
    """An HDF5 attribute that holds JSON, parsed as JSON only (a file's attribute is data, never code).

    ``expected`` is the JSON type it must decode to; a missing key gives ``default`` when one is set.
    Errors name the file, the attribute and what was expected.
    """
    if key not in attrs:
        if default is not None:
            return default
        raise ValueError(f"{path}: attribute '{key}' missing (expected a JSON {expected.__name__})")
    raw = attrs[key]
    try:
        value = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (TypeError, ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, expected):
        shown = str(raw)[:60]
        raise ValueError(f"{path}: attribute '{key}' is not a JSON {expected.__name__} (got {shown!r}); "
                         f"the file was not written by cambench or was altered")
    return value
