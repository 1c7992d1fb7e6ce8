# Figures for `snakemake --report`: heatmap galleries, metric distributions per family, robustness curves,
# critical-difference diagrams, the rank heatmap and the consistency-responsiveness plane.


rule gallery:
    input:
        dataset="results/{dataset}/dataset.h5",
        heatmaps="results/{dataset}/{model}/heatmaps/{perturbation}~{level}.h5",
    output:
        report(
            "results/{dataset}/{model}/figures/gallery_{perturbation}~{level}.png",
            caption="../reports/gallery.rst",
            category="Heatmaps",
            subcategory="{model}",
            labels={"dataset": "{dataset}", "model": "{model}", "perturbation": "{perturbation}", "level": "{level}"},
        ),
    params:
        split=config["cam"]["split"],
        n_images=config["report"]["gallery_images"],
    log:
        "results/logs/gallery/{dataset}/{model}/{perturbation}~{level}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/gallery.py"


rule metric_distributions:
    input:
        "results/metrics.parquet",
    output:
        report(
            "results/figures/distributions_{family}.png",
            caption="../reports/metric_distributions.rst",
            category="Metrics",
            subcategory="{family}",
            labels={"family": "{family}", "figure": "per-image distributions"},
        ),
    wildcard_constraints:
        family="faithfulness|robustness|localisation|axioms|sanity|complexity",
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
        metrics=report_metrics("curve_metrics"),
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
        metrics=report_metrics("cd_metrics"),
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
        provenance_inputs(),
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
