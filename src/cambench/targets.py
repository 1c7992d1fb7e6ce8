"""What the workflow makes, as paths: plain functions of the validated config (schema defaults filled in).

rules/common.smk wraps these in Snakemake input functions (wildcards in, values out); nothing here
touches Snakemake, so the files a config asks for can be tested without a DAG. Layout: docs/outputs.md §1;
shards: docs/cluster.md §2.
"""
from __future__ import annotations

import math
from pathlib import Path

from .config import is_standin, perturbation_sweep
from .data import standin_format, standin_writes_masks
from .engine import method_of
from .papers import PAPERS, check_paper_keys, paper_models

# --------------------------------------------------------------------------------------- sweep and levels


def sweep(config: dict) -> list[tuple[str, float]]:
    """(kind, level) pairs of the perturbation sweep, the clean images ('none', 0.0) first."""
    return [("none", 0.0)] + [(kind, level) for kind, levels, _ in perturbation_sweep(config) for level in levels]


def level_label(level) -> str:
    """Path form of a severity: shortest repr, no trailing '.0' (0.05 -> '0.05', 1.0 -> '1')."""
    text = repr(float(level))
    return text[:-2] if text.endswith(".0") else text


def level_of(config: dict, perturbation: str, label: str) -> float:
    """The severity a path's '<perturbation>~<label>' stands for; ValueError when the sweep has no such level."""
    levels = {(kind, level_label(level)): level for kind, level in sweep(config)}
    try:
        return levels[(perturbation, label)]
    except KeyError:
        raise ValueError(f"perturbation {perturbation}~{label} is not in the config's sweep") from None


def perturbation_params(config: dict, perturbation: str) -> dict:
    """The configured parameters of a perturbation kind ({} for 'none' and kinds without any)."""
    return {kind: params for kind, _, params in perturbation_sweep(config)}.get(perturbation, {})


# ------------------------------------------------------------------------------------------------ shards


def shard_labels(n_items: int, shard_size: int) -> list[str]:
    """'0000', '0001', ...: shards of ``shard_size`` items covering ``n_items`` (at least one shard)."""
    return [f"{k:04d}" for k in range(max(1, math.ceil(n_items / shard_size)))]


def shard_rows(shard: str, shard_size: int) -> list[int]:
    """[start, stop) of a shard in cam.split; the last shard's stop is clamped by the reader."""
    start = int(shard) * shard_size
    return [start, start + shard_size]


def level_dir(dataset: str, model: str, kind: str, perturbation: str, level: str) -> str:
    """Folder of one level's shards; ``kind``: 'heatmaps', 'metrics' or 'perturbed'."""
    return f"results/{dataset}/{model}/{kind}/{perturbation}~{level}"


def heatmap_shards(dataset: str, model: str, perturbation: str, level: str, shards: list[str]) -> list[str]:
    return [f"{level_dir(dataset, model, 'heatmaps', perturbation, level)}/shard-{k}.h5" for k in shards]


def metric_shards(dataset: str, model: str, perturbation: str, level: str, shards: list[str]) -> list[str]:
    return [f"{level_dir(dataset, model, 'metrics', perturbation, level)}/shard-{k}.parquet" for k in shards]


def perturbed_input(config: dict, dataset: str, model: str, perturbation: str, level: str, shard: str) -> str | None:
    """The stored perturbed images of a shard when store_perturbed is on (else None: regenerated on the fly)."""
    if not config["store_perturbed"] or perturbation == "none":
        return None
    return f"{level_dir(dataset, model, 'perturbed', perturbation, level)}/shard-{shard}.h5"


# ----------------------------------------------------------------------------------- data sets and models


def model_pairs(config: dict) -> list[tuple[str, str]]:
    """(dataset, model) of every configured model, in config order."""
    return [(spec["dataset"], name) for name, spec in config["models"].items()]


def format_of(config: dict, dataset: str) -> str:
    """The dataset's source format; a stand-in is written in its own kind's format."""
    spec = config["datasets"][dataset]
    return standin_format(spec["standin"]["kind"]) if is_standin(spec) else spec["format"]


def dataset_source(config: dict, dataset: str) -> str:
    """Folder the dataset is prepared from: the generated stand-in or the configured root."""
    spec = config["datasets"][dataset]
    return f"resources/{dataset}" if is_standin(spec) else spec["root"]


def image_root(config: dict, dataset: str) -> str:
    spec = config["datasets"][dataset]
    return f"resources/{dataset}/data" if is_standin(spec) else spec["root"]


def mask_root(config: dict, dataset: str) -> str:
    """Masks by image id: the stand-in's own (2D formats without native masks) or the configured folder."""
    spec = config["datasets"][dataset]
    if not is_standin(spec):
        return spec["mask_root"]
    return f"resources/{dataset}/masks" if standin_writes_masks(spec["standin"]["kind"]) else ""


def model_spec(config: dict, dataset: str, model: str) -> dict:
    """models.<model>; ValueError when the model belongs to another dataset (a path that mixes them)."""
    spec = config["models"][model]
    if spec["dataset"] != dataset:
        raise ValueError(f"model '{model}' belongs to dataset '{spec['dataset']}'")
    return spec


# ------------------------------------------------------------------------------------------ heatmap jobs

SYCAM_SEARCH = "search"  # sycam's expression comes from rule search_sycam


def searched_sycam(label: str, params: dict | None) -> bool:
    name, params = method_of(label, params)
    return name == "sycam" and params.get("expression") == SYCAM_SEARCH


def model_methods(config: dict, model: str) -> dict:
    """cam.methods restricted to the model's own list (models.<name>.methods; empty = all)."""
    chosen = config["models"][model].get("methods") or list(config["cam"]["methods"])
    return {label: config["cam"]["methods"][label] for label in chosen}


def sycam_expression(dataset: str, model: str) -> str:
    return f"results/{dataset}/{model}/sycam/expression.txt"


def heatmap_inputs(config: dict, dataset: str, model: str, perturbation: str, level: str, shard: str) -> dict:
    """Named inputs of one heatmap shard: data, model, stored perturbed images, searched SyCAM expression."""
    model_spec(config, dataset, model)
    base = f"results/{dataset}"
    inputs = {"dataset": f"{base}/dataset.h5", "model": f"{base}/{model}/model.pt"}
    perturbed = perturbed_input(config, dataset, model, perturbation, level, shard)
    if perturbed:
        inputs["perturbed"] = perturbed
    if any(searched_sycam(label, p) for label, p in model_methods(config, model).items()):
        inputs["sycam"] = sycam_expression(dataset, model)
    return inputs


def heatmap_methods(config: dict, model: str, sycam_path: str | None) -> dict:
    """cam.methods of the model, with 'expression: search' pointing at its searched expression file."""
    methods = {}
    for label, params in model_methods(config, model).items():
        params = dict(params or {})
        if searched_sycam(label, params):
            params["expression"] = f"file:{sycam_path}"
        methods[label] = params
    return methods


# ------------------------------------------------------------------------------------------ run outputs


def heatmap_files(config: dict, dataset: str, model: str) -> list[str]:
    return [f"results/{dataset}/{model}/heatmaps/{kind}~{level_label(level)}.h5" for kind, level in sweep(config)]


def metric_files(config: dict) -> list[str]:
    """The partitions of the run's metric table (cambench.tables; docs/outputs.md §2)."""
    return [
        f"results/metrics/{d}/{m}/{kind}~{level_label(level)}.parquet"
        for d, m in model_pairs(config)
        for kind, level in sweep(config)
    ]


def metrics_csv_wanted(config: dict, workdir: str | Path = ".") -> bool:
    """metrics.csv: 'always', 'never', or 'auto': when the cost plan's bound on the table's rows is at most
    metrics.csv_max_rows (a data set whose size the plan cannot tell counts as large)."""
    if config["metrics"]["csv"] != "auto":
        return config["metrics"]["csv"] == "always"
    from .plan import metric_row_bound  # builds models on the meta device: only when asked

    rows = metric_row_bound(config, Path(workdir))
    return rows is not None and rows <= config["metrics"]["csv_max_rows"]


def gallery_files(config: dict) -> list[str]:
    """Galleries of the report's levels only (report.gallery_levels; cambench.verdict.report_levels):
    the clean images and a few levels per perturbation kind, so that the report keeps its size budget."""
    from .verdict import report_levels

    levels = report_levels(sweep(config), config["report"]["gallery_levels"])
    return [
        f"results/{d}/{m}/figures/gallery_{kind}~{level_label(level)}.jpg"
        for d, m in model_pairs(config)
        for kind, level in levels
    ]


def report_metrics(config: dict, key: str) -> list[str]:
    """report.<key> (registered names: check_config), limited to those metrics.compute runs."""
    return [m for m in config["report"][key] if m in config["metrics"]["compute"]]


def metric_families(metrics=None) -> list[str]:
    """Sorted metric families (the registry's ``family``, docs/metrics.md §15) of ``metrics``, or of every
    registered metric."""
    from .metrics import METRICS

    names = METRICS.names() if metrics is None else metrics
    return sorted({METRICS.get(m).meta["family"] for m in names})


def figure_files(config: dict) -> list[str]:
    """Report figures: the rank heatmap, one distribution figure per metric family computed, per model
    critical-difference diagrams and (with a perturbation sweep) robustness curves, and the
    consistency-responsiveness plane where both metrics are computed."""
    computed = config["metrics"]["compute"]
    perturbed = len(sweep(config)) > 1
    files = ["results/figures/rank_heatmap.png",
             *[f"results/figures/distributions_{f}.png" for f in metric_families(computed)]]
    if report_metrics(config, "cd_metrics"):
        files += [f"results/figures/critical_difference_{m}.png" for _, m in model_pairs(config)]
    if perturbed and report_metrics(config, "curve_metrics"):
        files += [f"results/figures/robustness_curves_{m}.png" for _, m in model_pairs(config)]
    if perturbed and {"consistency", "responsiveness"} <= set(computed):
        files.append("results/figures/consistency_responsiveness.png")
    return files


PROVENANCE_OUTPUTS = [
    "results/provenance/provenance.html",
    "results/provenance/provenance.json",
    "results/tables/runtimes.csv",
    "results/tables/lineage.csv",
]

STATISTICS_TABLES = ("friedman", "posthoc", "kruskal", "mixed_model", "metric_summary")


def all_outputs(config: dict, metrics_csv: bool) -> list[str]:
    """Every file of the default target; ``metrics_csv``: whether results/metrics.csv is one
    (:func:`metrics_csv_wanted`, decided once per run)."""
    return [
        *PROVENANCE_OUTPUTS,
        *(["results/metrics.csv"] if metrics_csv else []),
        "results/tables/metric_summary.csv",
        "results/tables/friedman.csv",
        "results/tables/posthoc.csv",
        "results/tables/kruskal.csv",
        "results/tables/mixed_model.csv",
        "results/tables/models.csv",
        "results/tables/verdict.csv",
        "results/verdict/verdict.html",
        "results/verdict/verdict_summary.html",
        *[f"results/tables/{t}.csv.zip" for t in STATISTICS_TABLES],
        *figure_files(config),
        *gallery_files(config),
        *[f for d, m in model_pairs(config) for f in heatmap_files(config, d, m)],
    ]


def provenance_inputs(config: dict, metrics_csv: bool) -> list[str]:
    """Every result the run makes, and the intermediate files between them (for the lineage)."""
    pairs = model_pairs(config)
    chain = [f"results/{d}/dataset.h5" for d in dict.fromkeys(d for d, _ in pairs)]
    chain += [f"results/{d}/{m}/model.pt" for d, m in pairs]
    chain += metric_files(config)
    results = [f for f in all_outputs(config, metrics_csv) if f not in PROVENANCE_OUTPUTS]
    return list(dict.fromkeys(chain + results))


# ------------------------------------------------------------------------------- paper figures (papers.smk)


def model_method_names(config: dict, model: str) -> list[str]:
    """Labels and registered names of the methods a model runs (an alias label counts as its method)."""
    return [n for label, params in model_methods(config, model).items() for n in {label, method_of(label, params)[0]}]


def paper_selection(config: dict) -> dict[str, list[str]]:
    """paper -> models it uses; papers whose domain no configured model has are left out."""
    models = config["models"]
    keys = check_paper_keys(config["papers"]["include"] or list(PAPERS))
    methods = {m: model_method_names(config, m) for m in models}
    formats = {d: format_of(config, d) for d in config["datasets"]}
    chosen = {k: paper_models(k, models, formats, methods, config["papers"]["models"].get(k)) for k in keys}
    return {k: v for k, v in chosen.items() if v}


def metacam_models(config: dict) -> list[str]:
    return list(paper_selection(config).get("kaczmarek2023_metacam", []))


def cifake_pairs(config: dict) -> list[tuple[str, str]]:
    return [(config["models"][m]["dataset"], m) for m in paper_selection(config).get("bird2023_cifake", [])]


def paper_figure_files(config: dict) -> list[str]:
    """The files of target paper_figures: one table per selected paper, the index, the CIFAKE figures."""
    files = [f"results/papers/{k}.csv" for k in paper_selection(config)] + ["results/papers/index.csv"]
    files += [f"results/{d}/{m}/papers/cifake_gradcam.png" for d, m in cifake_pairs(config)]
    return files


# --------------------------------------------------------------------------------------------- resources


def gpus_per_job(device: str) -> int:
    """GPUs a GPU rule asks for: one when the config's device is CUDA, or 'auto' where CUDA is visible;
    otherwise none (Snakemake would run such jobs one at a time, and a CPU-only partition could not take
    them). docs/cluster.md §2."""
    if device.startswith("cuda"):
        return 1
    if device == "auto":
        import torch

        return int(torch.cuda.is_available())
    return 0
