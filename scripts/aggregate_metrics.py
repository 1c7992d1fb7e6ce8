"""Summary with confidence intervals and box statistics, block by block (rule aggregate_metrics)."""
from cambench.aggregate import aggregate_metrics
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    aggregate_metrics(list(sm.input), sm.output.summary, sm.output.boxes, n_boot=sm.params.bootstrap,
                      seed=sm.params.seed, bootstrap_max_n=sm.params.bootstrap_max_n, workers=sm.threads)
