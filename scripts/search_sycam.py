"""SyCAM expression search for one model (rule search_sycam)."""
from cambench.pipeline import search_sycam
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
with logged(sm):
    search_sycam(sm.input.dataset, sm.input.model, sm.output.expression, sm.output.table,
                 target_layer=p.target_layer, search=p.search, class_source=p.class_source, seed=p.seed,
                 device=p.device, memory_mb=p.memory_mb, config=sm.config)
