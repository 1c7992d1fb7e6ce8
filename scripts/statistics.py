"""Friedman tests across methods (rule statistics)."""
from cambench.scripting import logged
from cambench.stats import run_statistics

sm = snakemake  # noqa: F821
with logged(sm):
    run_statistics(sm.input[0], sm.output[0], alpha=sm.params.alpha)
