"""Train a model (optionally from local weights) and record its accuracy (rule train_model)."""
from cambench.jobs import TrainingJob
from cambench.pipeline import train_model
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    train_model(sm.input.dataset, sm.output.model, sm.output.metrics, TrainingJob.from_params(sm.params.job),
                config=sm.config)
