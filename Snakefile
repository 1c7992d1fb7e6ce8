# cambench: which Class Activation Map to trust, for your model and data.
#   snakemake --cores all                      the embedded default (synthetic stand-in, no download)
#   snakemake --cores all --configfile X.yaml  your data / models / methods
#   snakemake --report results/report.html     the report, after a run
from snakemake.utils import min_version

min_version("9.0")


# The embedded default applies only when no --configfile is given: a user's config replaces it
# rather than being merged into it (which would also run the default stand-in).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/model.smk"
include: "rules/sycam.smk"
include: "rules/perturb.smk"
include: "rules/heatmaps.smk"
include: "rules/metrics.smk"
include: "rules/stats.smk"
include: "rules/report.smk"
include: "rules/papers.smk"
include: "rules/plan.smk"


rule all:
    input:
        targets.all_outputs(config, METRICS_CSV),
    default_target: True
