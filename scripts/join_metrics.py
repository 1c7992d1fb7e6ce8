"""Per-shard metric tables of one (perturbation, level) -> one table (rule join_metrics)."""
from cambench.pipeline import join_metric_tables
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    join_metric_tables(list(sm.input), sm.output[0], metric_order=sm.params.metric_order)
