"""Metrics of one (perturbation, level) -> tidy parquet table (rule metrics)."""
from cambench.jobs import MetricJob
from cambench.pipeline import compute_metrics
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    compute_metrics(sm.input.dataset, sm.input.model, sm.input.heatmaps, sm.input.clean, sm.output[0],
                    MetricJob.from_params(sm.params.job), perturbed=sm.input.perturbed or None, config=sm.config)
