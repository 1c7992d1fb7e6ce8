"""What every Snakemake script needs: its log file as the destination of logging, stdout, stderr
(tqdm included), torch threads set from the rule's ``threads``, deterministic kernels (config
``deterministic``)."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch


def set_deterministic(enabled: bool = True) -> None:
    """Deterministic algorithms where torch has them; where it has none it warns (``warn_only``) and
    the result may differ in the last bits between GPU runs (BENCHMARKS.md states the tolerance).

    cuBLAS reads its workspace setting when its first handle is made, so this runs before any CUDA work.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


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
        logging.getLogger("cambench").info("rule %s, threads %d", snakemake.rule, snakemake.threads)
        try:
            yield
        except Exception:
            logging.getLogger("cambench").exception("rule %s failed", snakemake.rule)
            raise
