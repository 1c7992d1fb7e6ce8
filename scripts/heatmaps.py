"""All CAM methods for one (perturbation, level) -> heatmap HDF5 (rule heatmaps)."""
from cambench.jobs import HeatmapJob
from cambench.pipeline import compute_heatmaps
from cambench.scripting import logged

sm = snakemake  # noqa: F821
searched = [sm.input.sycam] if "sycam" in sm.input.keys() else []  # its checksum joins the provenance
with logged(sm):
    compute_heatmaps(sm.input.dataset, sm.input.model, sm.output[0], HeatmapJob.from_params(sm.params.job),
                     perturbed=sm.input.get("perturbed"), extra_inputs=searched, config=sm.config)
