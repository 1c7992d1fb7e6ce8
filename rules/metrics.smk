# Metrics: one tidy table per (perturbation, level, shard), joined per level into one partition of the
# run's metric table (results/metrics/<dataset>/<model>/<kind>~<level>.parquet; cambench.tables), which
# the reduce rules read block by block.


rule metrics:
    input:
        dataset="results/{dataset}/dataset.h5",
        model="results/{dataset}/{model}/model.pt",
        heatmaps="results/{dataset}/{model}/heatmaps/{perturbation}~{level}/shard-{shard}.h5",
        clean="results/{dataset}/{model}/heatmaps/none~0/shard-{shard}.h5",
        perturbed=perturbed_input,
    output:
        "results/{dataset}/{model}/metrics/{perturbation}~{level}/shard-{shard}.parquet",
    params:
        job=metric_job,
    threads: max(1, min(2, workflow.cores // 2))  # on 2 cores: two metric jobs side by side
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/metrics/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/metrics/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metrics.py"


rule join_metrics:
    input:
        metric_shards,
    output:
        "results/metrics/{dataset}/{model}/{perturbation}~{level}.parquet",
    params:
        metric_order=list(config["metrics"]["compute"]),
    log:
        "results/logs/join_metrics/{dataset}/{model}/{perturbation}~{level}.log",
    # A local rule; with the profiles' force-use-threads it runs in a thread of the Snakemake process.
    run:
        from cambench.pipeline import join_metric_tables

        Path(log[0]).write_text(f"{len(join_metric_tables(list(input), output[0], params.metric_order))} rows\n")


rule aggregate_metrics:
    input:
        targets.metric_files(config),
    output:
        summary="results/tables/metric_summary.csv",  # in the report as a zip (rule report_tables)
        boxes="results/metric_distributions.parquet",  # box statistics for the distribution figures
    params:
        bootstrap=config["stats"]["bootstrap"],
        bootstrap_max_n=config["stats"]["bootstrap_max_n"],
        seed=config["seed"],
    threads: REDUCE_THREADS
    log:
        "results/logs/aggregate_metrics.log",
    benchmark:
        "results/benchmarks/aggregate_metrics.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/aggregate_metrics.py"


# The whole table as one CSV: in the default targets only when it is small (metrics.csv), else on request:
#   snakemake --cores all results/metrics.csv
rule metrics_csv:
    input:
        targets.metric_files(config),
    output:
        "results/metrics.csv",
    log:
        "results/logs/metrics_csv.log",
    benchmark:
        "results/benchmarks/metrics_csv.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metrics_csv.py"
