"""All CAM methods for one (perturbation, level) -> heatmap HDF5 (rule heatmaps)."""
from cambench.pipeline import compute_heatmaps
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
searched = [sm.input.sycam] if "sycam" in sm.input.keys() else []  # its checksum joins the provenance
with logged(sm):
    compute_heatmaps(sm.input.dataset, sm.input.model, sm.output[0], perturbation=sm.wildcards.perturbation,
                     level=p.level, methods=p.methods, target_layer=p.target_layer, split=p.split,
                     class_source=p.class_source, batch_size=p.batch_size, memory_mb=p.memory_mb, dtype=p.dtype,
                     seed=p.seed, device=p.device, extra_inputs=searched,
                     perturbation_params=p.perturbation_params, perturbed=sm.input.get("perturbed"),
                     names={"dataset": sm.wildcards.dataset, "model": sm.wildcards.model}, config=sm.config, shard=p.shard,
                     store=p.store)
