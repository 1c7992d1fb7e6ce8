# SyCAM: a metric-guided search for a CAM weight expression, run on a split other than the
# evaluation split; heatmap jobs read the winning expression from its text file.


rule search_sycam:
    input:
        dataset="results/{dataset}/dataset.h5",
        model="results/{dataset}/{model}/model.pt",
    output:
        expression="results/{dataset}/{model}/sycam/expression.txt",
        table=report(
            "results/{dataset}/{model}/sycam/search.csv",
            caption="../reports/sycam.rst",
            category="SyCAM search",
            subcategory="{model}",
            labels={"dataset": "{dataset}", "model": "{model}"},
        ),
    params:
        search=config["cam"]["sycam"],
        target_layer=lambda w: model_spec(w)["target_layer"],
        class_source=config["cam"]["class_source"],
        memory_mb=config["cam"]["memory_mb"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/search_sycam/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/search_sycam/{dataset}/{model}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/search_sycam.py"
