"""Per-shard heatmap files of one (perturbation, level) -> one file, maps as virtual datasets (rule join_heatmaps)."""
import logging

from cambench.scripting import logged
from cambench.store import join_heatmaps

sm = snakemake  # noqa: F821
with logged(sm):
    logging.getLogger("cambench").info("joined %s", join_heatmaps(list(sm.input), sm.output[0]))
