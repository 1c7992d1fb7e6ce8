# Statistics: Friedman across methods (images as blocks), pairwise post-hoc tests, (dataset, model) groups
# compared paired (Wilcoxon / Friedman) when they share images and by Kruskal-Wallis + Dunn when they do not,
# linear mixed models of method x severity. Holm-adjusted p throughout: p_adj within the family named in each
# row's `family` column, p_adj_table over the whole table.


rule statistics:
    input:
        "results/metrics.parquet",
    output:
        friedman=report(
            "results/tables/friedman.csv",
            caption="../reports/friedman.rst",
            category="Statistical tests",
            subcategory="Tables: across methods",
            labels={"table": "Friedman across methods"},
        ),
        posthoc=report(
            "results/tables/posthoc.csv",
            caption="../reports/posthoc.rst",
            category="Statistical tests",
            subcategory="Tables: across methods",
            labels={"table": "Pairwise post-hoc (Wilcoxon, Nemenyi)"},
        ),
        kruskal=report(
            "results/tables/kruskal.csv",
            caption="../reports/kruskal.rst",
            category="Statistical tests",
            subcategory="Tables: across models",
            labels={"table": "Across models: paired Wilcoxon/Friedman or Kruskal-Wallis"},
        ),
        mixed_model=report(
            "results/tables/mixed_model.csv",
            caption="../reports/mixed_model.rst",
            category="Statistical tests",
            subcategory="Tables: severity",
            labels={"table": "Mixed model method x severity"},
        ),
    params:
        alpha=config["stats"]["alpha"],
        mixed_model_metrics=config["stats"]["mixed_model_metrics"],
    log:
        "results/logs/statistics.log",
    benchmark:
        "results/benchmarks/statistics.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/statistics.py"
