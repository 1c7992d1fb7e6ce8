"""What every Snakemake script needs: its log file as the destination of logging, stdout, stderr
(tqdm included), torch threads set from the rule's ``threads``."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch


@contextlib.contextmanager
def logged(snakemake):
    path = Path(snakemake.log[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        logging.basicConfig(stream=stream, level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        torch.set_num_threads(max(1, int(snakemake.threads)))
        logging.getLogger("cambench").info("rule %s, threads %d", snakemake.rule, snakemake.threads)
        try:
            yield
        except Exception:
            logging.getLogger("cambench").exception("rule %s failed", snakemake.rule)
            raise
