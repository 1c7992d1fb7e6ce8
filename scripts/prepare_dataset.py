"""Class-folder image set -> dataset HDF5 (rule prepare_dataset)."""
from cambench.pipeline import prepare_dataset
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    prepare_dataset(sm.params.root, sm.output[0], sm.params.mask_root, sm.params.channels, config=sm.config)
