"""Source files in a registered format -> dataset HDF5 (rule prepare_dataset)."""
from cambench.pipeline import prepare_dataset
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    prepare_dataset(sm.params.format, sm.params.root, sm.output[0], mask_root=sm.params.mask_root,
                    options=sm.params.options, channels=sm.params.channels, seed=sm.params.seed,
                    classes=sm.params.classes, resize=sm.params.resize, crop=sm.params.crop, config=sm.config)
