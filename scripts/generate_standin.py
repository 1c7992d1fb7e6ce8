"""Write a synthetic class-folder image set with planted masks (rule generate_standin)."""
from cambench.data import write_standin
from cambench.scripting import logged

with logged(snakemake):  # noqa: F821
    write_standin(snakemake.output[0], snakemake.params.spec, snakemake.params.seed)  # noqa: F821
