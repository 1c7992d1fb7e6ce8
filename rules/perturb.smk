# Perturbed images, stored only on request (store_perturbed: true); by default the heatmap and
# metric jobs regenerate them from the seed, which gives the same numbers without the disk.


rule store_perturbed:
    input:
        dataset="results/{dataset}/dataset.h5",
        model="results/{dataset}/{model}/model.pt",
    output:
        "results/{dataset}/{model}/perturbed/{perturbation}~{level}/shard-{shard}.h5",
    params:
        level=level_of,
        shard=shard_rows,
        perturbation_params=perturbation_params,
        target_layer=lambda w: model_spec(w)["target_layer"],
        split=config["cam"]["split"],
        batch_size=config["cam"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/perturbed/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/perturbed/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/store_perturbed.py"
