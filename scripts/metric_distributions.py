"""Per-image metric distributions of one metric family (rule metric_distributions)."""
from cambench.plots import metric_distributions
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    metric_distributions(sm.input[0], sm.output[0], sm.wildcards.family)
