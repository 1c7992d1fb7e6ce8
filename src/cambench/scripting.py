"""What every Snakemake script needs: its log file as the destination of logging, stdout, stderr
(tqdm included), torch threads set from the rule's ``threads``, deterministic kernels (config
``deterministic``), and for GPU jobs one free GPU of ``CUDA_VISIBLE_DEVICES``."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic algorithms where torch has them; where it has none it warns (``warn_only``) and
    the result may differ in the last bits between GPU runs (BENCHMARKS.md states the tolerance).

    cuBLAS reads its workspace setting when its first handle is made, so this runs before any CUDA work.

    ``torch.use_deterministic_algorithms`` also sets the flag in inductor's config, and importing that
    config pulls in the whole compiler stack: 1.6 s of every job's 4 s on a small workflow. Nothing
    here compiles, so inductor's flag is set only when inductor is already loaded (the kernel flag,
    which eager ops read, is set either way); ``torch.compile`` loaded later reads
    ``torch.are_deterministic_algorithms_enabled()`` for its own kernels.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled, warn_only=True)
    else:
        set_flag(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


_CLAIMED = []  # open lock files: a claim lasts as long as the job's process (a kill releases it)


def claim_gpu(env=os.environ, lock_dir: str | Path | None = None) -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to one device no other job of this user holds.

    Locally, ``snakemake --resources gpu=N`` runs up to N GPU jobs at once; each takes the first
    device of ``CUDA_VISIBLE_DEVICES`` whose lock file it can lock (``flock``, released when the
    process ends, however it ends). On SLURM the variable already names the job's own GPU(s) and
    a single device is used as is. Runs before CUDA starts (the variable is read then). Returns the
    device chosen, or None when there is nothing to choose from.
    """
    devices = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(devices) < 2:
        return devices[0] if devices else None
    folder = Path(lock_dir or Path(tempfile.gettempdir()) / f"cambench-gpu-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    for device in devices:
        handle = open(folder / f"{device}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIMED.append(handle)
        env["CUDA_VISIBLE_DEVICES"] = device
        return device
    logging.getLogger("cambench").warning("all of CUDA_VISIBLE_DEVICES=%s are held by other jobs; sharing %s "
                                          "(give --resources gpu=N with N at most the number of GPUs)",
                                          ",".join(devices), devices[0])
    env["CUDA_VISIBLE_DEVICES"] = devices[0]
    return devices[0]


@contextlib.contextmanager
def logged(snakemake):
    path = Path(snakemake.log[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(max(1, int(snakemake.threads)))
        set_deterministic(bool(snakemake.config.get("deterministic", True)))
        if int(getattr(snakemake.resources, "gpu", 0) or 0) > 0:
            logging.getLogger("cambench").info("GPU: CUDA_VISIBLE_DEVICES=%s", claim_gpu())
        logging.getLogger("cambench").info("rule %s, threads %d", snakemake.rule, snakemake.threads)
        try:
            yield
        except Exception:
            logging.getLogger("cambench").exception("rule %s failed", snakemake.rule)
            raise
