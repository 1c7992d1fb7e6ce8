"""Train a model (optionally from local weights) and record its accuracy (rule train_model)."""
from cambench.pipeline import train_model
from cambench.scripting import logged

sm = snakemake  # noqa: F821
spec = sm.params.spec
with logged(sm):
    train_model(sm.input.dataset, sm.output.model, sm.output.metrics, architecture=spec["architecture"],
                params=spec["params"], train=spec["train"], seed=sm.params.seed, device=sm.params.device,
                eval_split=sm.params.eval_split, weights=spec["weights"], weights_exclude=spec["weights_exclude"],
                config=sm.config, name=sm.wildcards.model, dataset=sm.wildcards.dataset)
