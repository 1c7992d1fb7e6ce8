"""Robustness curves of one model (rule robustness_curves)."""
from cambench.plots import robustness_curves
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    # skip_missing: a configured metric that produced no rows anywhere (e.g. localisation without masks)
    robustness_curves(sm.input[0], sm.output[0], list(sm.params.metrics), sm.wildcards.model, skip_missing=True)
