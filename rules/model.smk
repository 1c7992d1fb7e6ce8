# Models: train on the dataset's train split; record accuracy on the evaluation split.


rule train_model:
    input:
        dataset="results/{dataset}/dataset.h5",
        weights=lambda w: MODELS[w.model]["weights"] or [],
    output:
        model="results/{dataset}/{model}/model.pt",
        metrics="results/{dataset}/{model}/train.json",
    params:
        job=training_job,
    # Small CNNs scale poorly past a few threads: on 2 cores two single-thread trainings side by
    # side beat two 2-thread trainings in turn (BENCHMARKS.md).
    threads: max(1, min(4, workflow.cores // 2))
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/train_model/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{dataset}/{model}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/train_model.py"


rule models_table:
    input:
        unpack(lambda w: {m: f"results/{d}/{m}/train.json" for d, m in targets.model_pairs(config)}),
    output:
        report(
            "results/tables/models.csv",
            caption="../reports/models.rst",
            category="Models",
            subcategory="accuracy",
            labels={"table": "accuracy and training time"},
        ),
    log:
        "results/logs/models_table.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/models_table.py"
