"""CIFAKE's Grad-CAM figure on REAL and FAKE images (rule cifake_figure)."""
from cambench.papers import cifake_figure
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    cifake_figure(sm.input.dataset, sm.input.heatmaps, sm.output[0], split=sm.params.split)
