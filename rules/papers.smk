# The seed papers' figure and table types (target paper_figures), from this run's tables.
#   snakemake --cores all paper_figures                                  (default config: shapes)
#   snakemake --cores all paper_figures --configfile config/domains.yaml (every domain's stand-in)


rule paper_tables:
    input:
        summary="results/tables/metric_summary.csv",
        metrics=targets.metric_files(config),
        friedman="results/tables/friedman.csv",
        posthoc="results/tables/posthoc.csv",
        kruskal="results/tables/kruskal.csv",
        ensembles=[f"results/{MODELS[m]['dataset']}/{m}/papers/metacam_ensembles.csv" for m in targets.metacam_models(config)],
    output:
        index=report(
            "results/papers/index.csv",
            caption="../reports/papers.rst",
            category="Paper figures",
            subcategory="index",
            labels={"paper": "index", "table": "what was made from what"},
        ),
        tables=[
            report(
                f"results/papers/{key}.csv",
                caption="../reports/paper_table.rst",
                category="Paper figures",
                subcategory=PAPERS[key].citation,
                labels={"paper": key, "table": PAPERS[key].what[:60]},
            )
            for key in targets.paper_selection(config)
        ],
    params:
        papers=targets.paper_selection(config),
        methods=config["cam"]["methods"],
        bootstrap=config["stats"]["bootstrap"],
        seed=config["seed"],
        ensemble_models=targets.metacam_models(config),
    log:
        "results/logs/paper_tables.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/paper_tables.py"


rule metacam_ensembles:
    input:
        dataset="results/{dataset}/dataset.h5",
        model="results/{dataset}/{model}/model.pt",
    output:
        "results/{dataset}/{model}/papers/metacam_ensembles.csv",
    params:
        components=config["papers"]["metacam"]["components"],
        images=config["papers"]["metacam"]["images"],
        k=config["papers"]["metacam"]["k"],
        k_grid=config["papers"]["metacam"]["k_grid"],
        road=config["metrics"]["compute"].get("road_combined", {}),
        target_layer=lambda w: model_spec(w)["target_layer"],
        split=config["cam"]["split"],
        batch_size=config["cam"]["batch_size"],
        memory_mb=config["cam"]["memory_mb"],
        seed=config["seed"],
        device=config["device"],
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
    log:
        "results/logs/metacam_ensembles/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/metacam_ensembles/{dataset}/{model}.tsv"
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/metacam_ensembles.py"


rule cifake_figure:
    input:
        dataset="results/{dataset}/dataset.h5",
        heatmaps="results/{dataset}/{model}/heatmaps/none~0.h5",
    output:
        report(
            "results/{dataset}/{model}/papers/cifake_gradcam.png",
            caption="../reports/cifake_figure.rst",
            category="Paper figures",
            subcategory=PAPERS["bird2023_cifake"].citation,
            labels={"paper": "bird2023_cifake", "figure": "{model}: Grad-CAM on REAL and FAKE"},
        ),
    params:
        split=config["cam"]["split"],
    log:
        "results/logs/cifake_figure/{dataset}/{model}.log",
    conda:
        "../envs/cambench.yaml"
    script:
        "../scripts/cifake_figure.py"


rule paper_figures:
    input:
        targets.paper_figure_files(config),
