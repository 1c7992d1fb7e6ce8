# Data: a synthetic stand-in written in a real layout (no download), or the user's data in that
# layout -> dataset HDF5. One reader per format (cambench.data.formats).


rule generate_standin:
    output:
        directory("resources/{dataset}"),
    params:
        spec=lambda w: DATASETS[w.dataset]["standin"],
        seed=config["seed"],
    log:
        "results/logs/generate_standin/{dataset}.log",
    benchmark:
        "results/benchmarks/generate_standin/{dataset}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/generate_standin.py"


# A checkpoint: the number of shards follows from the prepared split's size.
checkpoint prepare_dataset:
    input:
        source=lambda w: targets.dataset_source(config, w.dataset),
    output:
        "results/{dataset}/dataset.h5",
    params:
        format=lambda w: targets.format_of(config, w.dataset),
        root=lambda w: targets.image_root(config, w.dataset),
        mask_root=lambda w: targets.mask_root(config, w.dataset),
        options=lambda w: DATASETS[w.dataset]["options"],
        channels=lambda w: DATASETS[w.dataset]["channels"],
        classes=lambda w: DATASETS[w.dataset]["classes"],
        resize=lambda w: DATASETS[w.dataset]["resize"],
        crop=lambda w: DATASETS[w.dataset]["crop"],
        seed=config["seed"],
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/prepare_dataset.py"
