# Figures for `snakemake --report`: the verdict (the report's answer, first), heatmap galleries, metric
# distributions per family, robustness curves, critical-difference diagrams, the rank heatmap and the
# consistency-responsiveness plane. report.budget_mb bounds report.html (cambench.verdict): galleries for
# the report's levels only, each within its byte share; the statistics tables zipped, cut where needed.
from cambench.verdict import gallery_byte_cap, report_levels, table_byte_budget


rule verdict:
    input:
        summary="results/tables/metric_summary.csv",
        posthoc="results/tables/posthoc.csv",
        heatmaps=[f"results/{d}/{m}/heatmaps/none~0.h5" for d, m in targets.model_pairs(config)],
    output:
        csv=report(
            "results/tables/verdict.csv",
            caption="../reports/verdict.rst",
            category="Answer",
            subcategory="verdict",
            labels={"page": "verdict table (CSV)"},
        ),
        html=report(
            "results/verdict/verdict.html",
            caption="../reports/verdict.rst",
            category="Answer",
            subcategory="verdict",
            labels={"page": "verdict: which CAM to trust"},
        ),
        summary="results/verdict/verdict_summary.html",  # shown on the landing page (reports/workflow.rst)
    params:
        pairs=[list(pair) for pair in targets.model_pairs(config)],
        alpha=config["stats"]["alpha"],
        standin={d: spec.get("standin", {}).get("kind", "none") for d, spec in DATASETS.items()},
        methods=config["cam"]["methods"],
    log:
        "results/logs/verdict.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/verdict.py"


rule report_tables:
    input:
        friedman="results/tables/friedman.csv",
        posthoc="results/tables/posthoc.csv",
        kruskal="results/tables/kruskal.csv",
        mixed_model="results/tables/mixed_model.csv",
        metric_summary="results/tables/metric_summary.csv",
    output:
        friedman=report(
            "results/tables/friedman.csv.zip",
            caption="../reports/friedman.rst",
            category="Statistical tests",
            subcategory="Tables: across methods",
            labels={"table": "Friedman across methods"},
        ),
        posthoc=report(
            "results/tables/posthoc.csv.zip",
            caption="../reports/posthoc.rst",
            category="Statistical tests",
            subcategory="Tables: across methods",
            labels={"table": "Pairwise post-hoc (Wilcoxon, Nemenyi)"},
        ),
        kruskal=report(
            "results/tables/kruskal.csv.zip",
            caption="../reports/kruskal.rst",
            category="Statistical tests",
            subcategory="Tables: across models",
            labels={"table": "Across models: paired Wilcoxon/Friedman or Kruskal-Wallis"},
        ),
        mixed_model=report(
            "results/tables/mixed_model.csv.zip",
            caption="../reports/mixed_model.rst",
            category="Statistical tests",
            subcategory="Tables: severity",
            labels={"table": "Mixed model method x severity"},
        ),
        metric_summary=report(
            "results/tables/metric_summary.csv.zip",
            caption="../reports/metric_summary.rst",
            category="Tables",
            subcategory="metrics",
            labels={"table": "metric summary (means, 95 % CIs)"},
        ),
    params:
        budget_bytes=table_byte_budget(config["report"]["budget_mb"]),
        levels=report_levels(SWEEP, config["report"]["gallery_levels"]),
    log:
        "results/logs/report_tables.log",
    run:
        from cambench.verdict import zip_tables

        zip_tables({name: (input[name], output[name]) for name in output.keys()}, params.budget_bytes, params.levels,
                   log[0])


rule gallery:
    input:
        dataset="results/{dataset}/dataset.h5",
        heatmaps="results/{dataset}/{model}/heatmaps/{perturbation}~{level}.h5",
    output:
        report(
            "results/{dataset}/{model}/figures/gallery_{perturbation}~{level}.jpg",
            caption="../reports/gallery.rst",
            category="Heatmaps",
            subcategory="{model}",
            labels={"dataset": "{dataset}", "model": "{model}", "perturbation": "{perturbation}", "level": "{level}"},
        ),
    params:
        split=config["cam"]["split"],
        n_images=config["report"]["gallery_images"],
        max_px=config["report"]["gallery_max_px"],
        max_bytes=gallery_byte_cap(config["report"]["budget_mb"], len(targets.gallery_files(config))),
    log:
        "results/logs/gallery/{dataset}/{model}/{perturbation}~{level}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/gallery.py"


rule metric_distributions:
    input:
        "results/metric_distributions.parquet",
    output:
        report(
            "results/figures/distributions_{family}.png",
            caption="../reports/metric_distributions.rst",
            category="Metrics",
            subcategory="{family}",
            labels={"family": "{family}", "figure": "per-image distributions"},
        ),
    wildcard_constraints:
        family="|".join(targets.metric_families()),  # the metric registry's families (docs/metrics.md §15)
    log:
        "results/logs/metric_distributions/{family}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metric_distributions.py"


rule robustness_curves:
    input:
        "results/tables/metric_summary.csv",
    output:
        report(
            "results/figures/robustness_curves_{model}.png",
            caption="../reports/robustness_curves.rst",
            category="Robustness",
            subcategory="Severity curves",
            labels={"model": "{model}", "figure": "robustness curves"},
        ),
    params:
        metrics=targets.report_metrics(config, "curve_metrics"),
    log:
        "results/logs/robustness_curves/{model}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/robustness_curves.py"


rule consistency_responsiveness:
    input:
        "results/tables/metric_summary.csv",
    output:
        report(
            "results/figures/consistency_responsiveness.png",
            caption="../reports/consistency_responsiveness.rst",
            category="Robustness",
            subcategory="Consistency vs responsiveness",
            labels={"figure": "consistency-responsiveness plane"},
        ),
    log:
        "results/logs/consistency_responsiveness.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/consistency_responsiveness.py"


rule critical_difference:
    input:
        friedman="results/tables/friedman.csv",
        posthoc="results/tables/posthoc.csv",
    output:
        report(
            "results/figures/critical_difference_{model}.png",
            caption="../reports/critical_difference.rst",
            category="Statistical tests",
            subcategory="Critical difference",
            labels={"model": "{model}", "figure": "critical-difference diagrams (clean)"},
        ),
    params:
        metrics=targets.report_metrics(config, "cd_metrics"),
        alpha=config["stats"]["alpha"],
    log:
        "results/logs/critical_difference/{model}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/critical_difference.py"


rule rank_heatmap:
    input:
        "results/tables/friedman.csv",
    output:
        report(
            "results/figures/rank_heatmap.png",
            caption="../reports/rank_heatmap.rst",
            category="Statistical tests",
            subcategory="Mean ranks",
            labels={"figure": "mean-rank heatmap", "condition": "clean"},
        ),
    params:
        condition="clean",
    log:
        "results/logs/rank_heatmap.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/rank_heatmap.py"


rule provenance:
    input:
        targets.provenance_inputs(config, METRICS_CSV),
    output:
        json="results/provenance/provenance.json",
        html=report(
            "results/provenance/provenance.html",
            caption="../reports/provenance.rst",
            category="Provenance",
            subcategory="run",
            labels={"page": "provenance: commit, config, software, devices, lineage"},
        ),
        runtimes=report(
            "results/tables/runtimes.csv",
            caption="../reports/runtimes.rst",
            category="Provenance",
            subcategory="run",
            labels={"page": "per-rule runtimes"},
        ),
        lineage=report(
            "results/tables/lineage.csv",
            caption="../reports/lineage.rst",
            category="Provenance",
            subcategory="run",
            labels={"page": "lineage of every output"},
        ),
    log:
        "results/logs/provenance.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/provenance.py"
