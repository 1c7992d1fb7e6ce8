"""Heatmap gallery of one heatmap file (rule gallery)."""
from cambench.plots import heatmap_gallery
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    heatmap_gallery(sm.input.dataset, sm.input.heatmaps, sm.output[0], sm.params.split, sm.params.n_images,
                    max_px=sm.params.max_px, max_bytes=sm.params.max_bytes)
