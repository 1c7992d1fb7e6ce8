# Statistics: Friedman test across methods with images as blocks, Kendall's W, Holm-adjusted p.


rule statistics:
    input:
        "results/metrics.parquet",
    output:
        report(
            "results/tables/friedman.csv",
            caption="../reports/friedman.rst",
            category="Statistical tests",
            labels={"table": "Friedman across methods"},
        ),
    params:
        alpha=config["stats"]["alpha"],
    log:
        "results/logs/statistics.log",
    benchmark:
        "results/benchmarks/statistics.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/statistics.py"
