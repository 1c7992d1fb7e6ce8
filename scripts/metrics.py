"""Metrics of one (perturbation, level) -> tidy parquet table (rule metrics)."""
from cambench.pipeline import compute_metrics
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
with logged(sm):
    compute_metrics(sm.input.dataset, sm.input.model, sm.input.heatmaps, sm.input.clean, sm.output[0],
                    metrics=p.metrics, score=p.score, memory_mb=p.memory_mb,
                    perturbation=sm.wildcards.perturbation, level=p.level, split=p.split, seed=p.seed,
                    dataset=sm.wildcards.dataset, model=sm.wildcards.model, device=p.device,
                    batch_size=p.batch_size, perturbation_params=p.perturbation_params,
                    perturbed=sm.input.perturbed or None, config=sm.config, shard=p.shard)
