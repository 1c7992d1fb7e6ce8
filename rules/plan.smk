# `snakemake plan`: what the config will cost (images, model passes, device time, disk) before any
# job runs (cambench.plan; also `python -m cambench.plan --configfile X`). A rule without outputs:
# it runs whenever it is named, and never as part of `all`. Local: it times the model on this machine.


localrules:
    plan,


rule plan:
    threads: 2  # the heatmap rule's torch threads: the model is timed as a heatmap job runs it
    log:
        "results/logs/plan.log",  # the printed plan, kept
    run:
        from cambench.plan import format_plan, make_plan

        text = format_plan(make_plan(config, workdir=".", threads=threads))
        Path(log[0]).write_text(text)
        print(text, end="", flush=True)
