"""Friedman, pairwise post-hoc, Kruskal-Wallis and mixed-model tables, block by block (rule statistics)."""
from cambench.scripting import logged
from cambench.stats import STATS_OUTPUTS, run_statistics

sm = snakemake  # noqa: F821
with logged(sm):
    run_statistics(list(sm.input), {name: sm.output[name] for name in STATS_OUTPUTS}, alpha=sm.params.alpha,
                   mixed_model_metrics=sm.params.mixed_model_metrics,
                   mixed_model_max_images=sm.params.mixed_model_max_images, seed=sm.params.seed,
                   workers=sm.threads)
