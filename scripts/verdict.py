"""The verdict: best methods per metric family, their ties and caveats (rule verdict)."""
from cambench.scripting import logged
from cambench.verdict import write_verdict

sm = snakemake  # noqa: F821
with logged(sm):
    heatmaps = {tuple(pair): path for pair, path in zip(sm.params.pairs, sm.input.heatmaps)}
    write_verdict(sm.input.summary, sm.input.posthoc, heatmaps,
                  {"csv": sm.output.csv, "html": sm.output.html, "summary": sm.output.summary},
                  alpha=sm.params.alpha, standin=sm.params.standin, methods=sm.params.methods)
