# Heatmaps: every CAM method for one (perturbation, level) in one job; one forward + one backward
# per batch serves all gradient methods. Perturbed images are regenerated from the seed, not stored.


rule heatmaps:
    input:
        unpack(heatmap_inputs),
    output:
        "results/{dataset}/{model}/heatmaps/{perturbation}~{level}.h5",
    params:
        level=level_of,
        perturbation_params=perturbation_params,
        methods=heatmap_methods,
        target_layer=lambda w: model_spec(w)["target_layer"],
        split=config["cam"]["split"],
        class_source=config["cam"]["class_source"],
        batch_size=config["cam"]["batch_size"],
        memory_mb=config["cam"]["memory_mb"],
        dtype=config["cam"]["dtype"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    log:
        "results/logs/heatmaps/{dataset}/{model}/{perturbation}~{level}.log",
    benchmark:
        "results/benchmarks/heatmaps/{dataset}/{model}/{perturbation}~{level}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/heatmaps.py"
