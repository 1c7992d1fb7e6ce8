"""MetaCAM's ROAD by ensemble subset and the CRE (rule metacam_ensembles)."""
from cambench.pipeline import metacam_ensembles
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
with logged(sm):
    metacam_ensembles(sm.input.dataset, sm.input.model, sm.output[0], components=list(p.components),
                      component_params={}, k=p.k, k_grid=list(p.k_grid), consensus="gated_mean",
                      metric_params=dict(p.road),
                      split=p.split, dataset=sm.wildcards.dataset, model=sm.wildcards.model,
                      target_layer=p.target_layer, images=p.images, batch_size=p.batch_size,
                      memory_mb=p.memory_mb, seed=p.seed, device=p.device)
