# Metrics: one tidy table per (perturbation, level), then one table for the whole run.


rule metrics:
    input:
        dataset="results/{dataset}/dataset.h5",
        model="results/{dataset}/{model}/model.pt",
        heatmaps="results/{dataset}/{model}/heatmaps/{perturbation}~{level}.h5",
        clean="results/{dataset}/{model}/heatmaps/none~0.h5",
        perturbed=perturbed_input,
    output:
        "results/{dataset}/{model}/metrics/{perturbation}~{level}.parquet",
    params:
        level=level_of,
        perturbation_params=perturbation_params,
        batch_size=config["cam"]["batch_size"],
        metrics=config["metrics"]["compute"],
        score=config["metrics"]["score"],
        memory_mb=config["metrics"]["memory_mb"],
        split=config["cam"]["split"],
        seed=config["seed"],
        device=config["device"],
    threads: max(1, min(2, workflow.cores // 2))  # on 2 cores: two metric jobs side by side
    log:
        "results/logs/metrics/{dataset}/{model}/{perturbation}~{level}.log",
    benchmark:
        "results/benchmarks/metrics/{dataset}/{model}/{perturbation}~{level}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metrics.py"


rule aggregate_metrics:
    input:
        metric_files(),
    output:
        parquet="results/metrics.parquet",
        csv="results/metrics.csv",  # not embedded in the report: ~100k rows would make it tens of MB
        summary=report(
            "results/tables/metric_summary.csv",
            caption="../reports/metric_summary.rst",
            category="Tables",
            subcategory="metrics",
            labels={"table": "metric summary (means, 95 % CIs)"},
        ),
    params:
        bootstrap=config["stats"]["bootstrap"],
        seed=config["seed"],
    log:
        "results/logs/aggregate_metrics.log",
    benchmark:
        "results/benchmarks/aggregate_metrics.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/aggregate_metrics.py"
