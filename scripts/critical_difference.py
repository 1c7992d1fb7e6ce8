"""Critical-difference diagrams of one model on clean images (rule critical_difference)."""
from cambench.plots import critical_difference
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    critical_difference(sm.input.friedman, sm.input.posthoc, sm.output[0], list(sm.params.metrics), sm.wildcards.model,
                        alpha=sm.params.alpha, skip_missing=True)
