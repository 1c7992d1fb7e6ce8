# Statistics: Friedman across methods (images as blocks), pairwise post-hoc tests, (dataset, model) groups
# compared paired (Wilcoxon / Friedman) when they share images and by Kruskal-Wallis + Dunn when they do not,
# linear mixed models of method x severity. Holm-adjusted p throughout: p_adj within the family named in each
# row's `family` column, p_adj_table over the whole table.


rule statistics:
    input:
        targets.metric_files(config),
    output:
        # embedded in the report zipped, within report.budget_mb (rule report_tables)
        friedman="results/tables/friedman.csv",
        posthoc="results/tables/posthoc.csv",
        kruskal="results/tables/kruskal.csv",
        mixed_model="results/tables/mixed_model.csv",
    params:
        alpha=config["stats"]["alpha"],
        mixed_model_metrics=config["stats"]["mixed_model_metrics"],
        mixed_model_max_images=config["stats"]["mixed_model_max_images"],
        seed=config["seed"],
    threads: REDUCE_THREADS
    log:
        "results/logs/statistics.log",
    benchmark:
        "results/benchmarks/statistics.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/statistics.py"
