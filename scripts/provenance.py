"""The report's provenance section: lineage, runtimes, software, config (rule provenance)."""
from cambench.report import write_provenance
from cambench.scripting import logged

sm = snakemake  # noqa: F821
with logged(sm):
    write_provenance(dict(sm.config), list(sm.input), sm.output.json, sm.output.html, sm.output.runtimes,
                     sm.output.lineage)
