"""Consistency against responsiveness per method (rule consistency_responsiveness)."""
from cambench.plots import consistency_responsiveness_plane
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    consistency_responsiveness_plane(sm.input[0], sm.output[0])
