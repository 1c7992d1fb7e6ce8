"""Concatenate the metric tables; summary with bootstrap CIs (rule aggregate_metrics)."""
from cambench.pipeline import aggregate_metrics
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    aggregate_metrics(list(sm.input), sm.output.parquet, sm.output.csv, sm.output.summary,
                      n_boot=sm.params.bootstrap, seed=sm.params.seed)
