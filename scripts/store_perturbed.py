"""Perturbed images of one (kind, level) -> HDF5 (rule store_perturbed, only with store_perturbed: true)."""
from cambench.pipeline import store_perturbed
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
with logged(sm):
    store_perturbed(sm.input.dataset, sm.input.model, sm.output[0], perturbation=sm.wildcards.perturbation,
                    level=p.level, params=p.perturbation_params, target_layer=p.target_layer, split=p.split,
                    batch_size=p.batch_size, seed=p.seed, device=p.device, config=sm.config, shard=p.shard)
