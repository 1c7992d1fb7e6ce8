"""The whole metric table as one CSV, written block by block (rule metrics_csv)."""
from cambench.scripting import logged
from cambench.tables import write_csv

sm = snakemake  # noqa: F821
with logged(sm):
    write_csv(list(sm.input), sm.output[0])
