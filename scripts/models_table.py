"""One row per model: accuracy and training cost (rule models_table)."""
from cambench.pipeline import models_table
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    models_table(dict(sm.input.items()), sm.output[0])
