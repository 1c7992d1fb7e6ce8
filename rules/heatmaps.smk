# Heatmaps: every CAM method for one (perturbation, level, shard) in one job (one model load, many
# batches; one forward + one backward per batch serves all gradient methods). Perturbed images are
# regenerated from the seed, not stored. The shards of a level are joined without copying the maps.


rule heatmaps:
    input:
        unpack(heatmap_inputs),
    output:
        "results/{dataset}/{model}/heatmaps/{perturbation}~{level}/shard-{shard}.h5",
    params:
        job=heatmap_job,
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/heatmaps/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/heatmaps/{dataset}/{model}/{perturbation}~{level}/shard-{shard}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/heatmaps.py"


rule join_heatmaps:
    input:
        heatmap_shards,
    output:
        "results/{dataset}/{model}/heatmaps/{perturbation}~{level}.h5",
    log:
        "results/logs/join_heatmaps/{dataset}/{model}/{perturbation}~{level}.log",
    # A local rule; with the profiles' force-use-threads it runs in a thread of the Snakemake process.
    run:
        from cambench.store import join_heatmaps

        Path(log[0]).write_text(f"{join_heatmaps(list(input), output[0])}\n")
