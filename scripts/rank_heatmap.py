"""Mean-rank heatmap, method x metric, one panel per model (rule rank_heatmap)."""
from cambench.plots import rank_heatmap
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    rank_heatmap(sm.input[0], sm.output[0], sm.params.condition)
