"""Every selected paper's table and the index (rule paper_tables)."""
from cambench.papers import write_paper_tables
from cambench.scripting import logged

sm = snakemake  # noqa: F821
p = sm.params
with logged(sm):
    write_paper_tables(p.papers, sm.input.summary, list(sm.input.metrics),
                       {"friedman": sm.input.friedman, "posthoc": sm.input.posthoc, "kruskal": sm.input.kruskal},
                       p.methods, {k: f"results/papers/{k}.csv" for k in p.papers}, sm.output.index,
                       dict(zip(p.ensemble_models, sm.input.ensembles)), n_boot=p.bootstrap, seed=p.seed)
