# Figures for `snakemake --report`: heatmap galleries and metric distributions.


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
            labels={"model": "{model}", "perturbation": "{perturbation}", "level": "{level}"},
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
            "results/figures/metric_distributions.png",
            caption="../reports/metric_distributions.rst",
            category="Metrics",
            labels={"figure": "distributions per method"},
        ),
    log:
        "results/logs/metric_distributions.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metric_distributions.py"
