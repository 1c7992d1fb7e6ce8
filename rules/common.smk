# Config validation, names, wildcard constraints and input functions shared by every stage.
import math
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:
    from cambench.config import (ConfigError, check_config, is_standin, load_schema, perturbation_sweep,
                                 schema_errors)
    from cambench.data import split_size, standin_format, standin_writes_masks
    from cambench.engine import method_of
    from cambench.papers import PAPERS, check_paper_keys, paper_models
    from cambench.perturbations import perturbations as registered_perturbations
except ImportError as err:
    raise WorkflowError(
        f"cannot import the cambench library ({err}); install it first: pip install -e ."
    ) from None

SCHEMA = str(Path(workflow.basedir) / "config" / "schema.yaml")

# Validate before any job: schema (with defaults filled in), then what a schema cannot express.
try:
    validate(config, SCHEMA)
except WorkflowError:
    errors = schema_errors(config, load_schema(SCHEMA)) or ["does not match config/schema.yaml"]
    raise WorkflowError(f"invalid config: {errors[0]}") from None
try:
    check_config(config, workdir=".")
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None

DATASETS = config["datasets"]
MODELS = config["models"]
NAME = "[A-Za-z0-9][A-Za-z0-9_-]*"


wildcard_constraints:
    dataset=NAME,
    model=NAME,
    perturbation="|".join(registered_perturbations()),
    level=r"\d[\w.-]*",
    shard=r"\d\d\d\d+",


# Joins are seconds of I/O: on a cluster they run in the Snakemake process, not as jobs.
localrules:
    join_heatmaps,
    join_metrics,


# The reduce rules (aggregate_metrics, statistics) read the metric table block by block in this many
# worker processes; each holds one block (images x methods of one metric at one level) at a time.
REDUCE_THREADS = max(1, min(4, workflow.cores))


# GPU rules ask for one GPU each (locally `--resources gpu=N` runs N at a time; on SLURM the
# plugin requests it) when the config's device is CUDA, or 'auto' where CUDA is visible. Otherwise
# none: Snakemake would run such jobs one at a time, and a CPU-only partition could not take them.
def _gpus_per_job(device):
    if device.startswith("cuda"):
        return 1
    if device == "auto":
        import torch

        return int(torch.cuda.is_available())
    return 0


GPUS_PER_JOB = _gpus_per_job(config["device"])
SHARD_SIZE = config["shards"]["size"]
_SPLIT_SIZES = {}


def split_items(dataset):
    """Items of cam.split in the prepared dataset (a checkpoint: known once prepare_dataset ran)."""
    path = checkpoints.prepare_dataset.get(dataset=dataset).output[0]
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _SPLIT_SIZES:
        _SPLIT_SIZES[key] = split_size(path, config["cam"]["split"])
    return _SPLIT_SIZES[key]


def shard_labels(dataset):
    return [f"{k:04d}" for k in range(max(1, math.ceil(split_items(dataset) / SHARD_SIZE)))]


def shard_rows(wildcards):
    """[start, stop) of the shard in cam.split; the last shard's stop is clamped by the reader."""
    start = int(wildcards.shard) * SHARD_SIZE
    return [start, start + SHARD_SIZE]


def _level_dir(wildcards, kind):
    return f"results/{wildcards.dataset}/{wildcards.model}/{kind}/{wildcards.perturbation}~{wildcards.level}"


def heatmap_shards(wildcards):
    return [f"{_level_dir(wildcards, 'heatmaps')}/shard-{k}.h5" for k in shard_labels(wildcards.dataset)]


def metric_shards(wildcards):
    return [f"{_level_dir(wildcards, 'metrics')}/shard-{k}.parquet" for k in shard_labels(wildcards.dataset)]


def level_label(level):
    """Path form of a severity: shortest repr, no trailing '.0' (0.05 -> '0.05', 1.0 -> '1')."""
    text = repr(float(level))
    return text[:-2] if text.endswith(".0") else text


# (kind, level) pairs of the sweep, clean images first; LEVELS maps path labels back to numbers.
SWEEP = [("none", 0.0)] + [
    (kind, level) for kind, levels, _ in perturbation_sweep(config) for level in levels
]
LEVELS = {(kind, level_label(level)): level for kind, level in SWEEP}
PERTURBATION_PARAMS = {kind: params for kind, _, params in perturbation_sweep(config)}


def perturbation_params(wildcards):
    return PERTURBATION_PARAMS.get(wildcards.perturbation, {})


def perturbed_input(wildcards):
    """The stored perturbed images when store_perturbed is on (else regenerated on the fly)."""
    if not config["store_perturbed"] or wildcards.perturbation == "none":
        return []
    return f"{_level_dir(wildcards, 'perturbed')}/shard-{wildcards.shard}.h5"


def level_of(wildcards):
    try:
        return LEVELS[(wildcards.perturbation, wildcards.level)]
    except KeyError:
        raise WorkflowError(
            f"perturbation {wildcards.perturbation}~{wildcards.level} is not in the config's sweep"
        ) from None


def model_pairs():
    return [(spec["dataset"], name) for name, spec in MODELS.items()]


def format_of(dataset):
    """The dataset's source format; a stand-in is written in its own kind's format."""
    spec = DATASETS[dataset]
    return standin_format(spec["standin"]["kind"]) if is_standin(spec) else spec["format"]


def dataset_format(wildcards):
    return format_of(wildcards.dataset)


def dataset_source(wildcards):
    """Folder the dataset is prepared from: the generated stand-in or the configured root."""
    spec = DATASETS[wildcards.dataset]
    return f"resources/{wildcards.dataset}" if is_standin(spec) else spec["root"]


def image_root(wildcards):
    spec = DATASETS[wildcards.dataset]
    return f"resources/{wildcards.dataset}/data" if is_standin(spec) else spec["root"]


def mask_root(wildcards):
    """Masks by image id: the stand-in's own (2D formats without native masks) or the configured folder."""
    spec = DATASETS[wildcards.dataset]
    if not is_standin(spec):
        return spec["mask_root"]
    return f"resources/{wildcards.dataset}/masks" if standin_writes_masks(spec["standin"]["kind"]) else ""


def model_spec(wildcards):
    spec = MODELS[wildcards.model]
    if spec["dataset"] != wildcards.dataset:
        raise WorkflowError(f"model '{wildcards.model}' belongs to dataset '{spec['dataset']}'")
    return spec


SYCAM_SEARCH = "search"  # sycam's expression comes from rule search_sycam


def searched_sycam(label, params):
    name, params = method_of(label, params)
    return name == "sycam" and params.get("expression") == SYCAM_SEARCH


def model_methods(wildcards):
    """cam.methods restricted to the model's own list (models.<name>.methods; empty = all)."""
    chosen = model_spec(wildcards).get("methods") or list(config["cam"]["methods"])
    return {label: config["cam"]["methods"][label] for label in chosen}


def heatmap_inputs(wildcards):
    model_spec(wildcards)
    base = f"results/{wildcards.dataset}"
    inputs = {"dataset": f"{base}/dataset.h5", "model": f"{base}/{wildcards.model}/model.pt"}
    if perturbed_input(wildcards):
        inputs["perturbed"] = perturbed_input(wildcards)
    if any(searched_sycam(label, p) for label, p in model_methods(wildcards).items()):
        inputs["sycam"] = f"{base}/{wildcards.model}/sycam/expression.txt"
    return inputs


def heatmap_methods(wildcards, input):
    """cam.methods, with 'expression: search' pointing at this model's searched expression."""
    methods = {}
    for label, params in model_methods(wildcards).items():
        params = dict(params or {})
        if searched_sycam(label, params):
            params["expression"] = f"file:{input.sycam}"
        methods[label] = params
    return methods


def heatmap_files(dataset, model):
    return [
        f"results/{dataset}/{model}/heatmaps/{kind}~{level_label(level)}.h5"
        for kind, level in SWEEP
    ]


def metric_files():
    """The partitions of the run's metric table (cambench.tables)."""
    return [
        f"results/metrics/{d}/{m}/{kind}~{level_label(level)}.parquet"
        for d, m in model_pairs()
        for kind, level in SWEEP
    ]


def _metrics_csv_wanted():
    """metrics.csv: 'always', 'never', or 'auto': when the cost plan's bound on the table's rows is at most
    metrics.csv_max_rows (a data set whose size the plan cannot tell counts as large)."""
    if config["metrics"]["csv"] != "auto":
        return config["metrics"]["csv"] == "always"
    from cambench.plan import metric_row_bound

    rows = metric_row_bound(config, Path("."))
    return rows is not None and rows <= config["metrics"]["csv_max_rows"]


METRICS_CSV = _metrics_csv_wanted()


def gallery_files():
    """Galleries of the report's levels only (report.gallery_levels; cambench.verdict.report_levels):
    the clean images and a few levels per perturbation kind, so that the report keeps its size budget."""
    from cambench.verdict import report_levels

    return [
        f"results/{d}/{m}/figures/gallery_{kind}~{level_label(level)}.jpg"
        for d, m in model_pairs()
        for kind, level in report_levels(SWEEP, config["report"]["gallery_levels"])
    ]


def report_metrics(key):
    """report.<key> (registered names: check_config), limited to those metrics.compute runs."""
    return [m for m in config["report"][key] if m in config["metrics"]["compute"]]


def figure_files():
    """Report figures: the rank heatmap, one distribution figure per metric family computed, per model
    critical-difference diagrams and (with a perturbation sweep) robustness curves, and the
    consistency-responsiveness plane where both metrics are computed."""
    from cambench.metrics import METRICS

    computed = config["metrics"]["compute"]
    perturbed = len(SWEEP) > 1
    families = sorted({METRICS.get(m).meta["family"] for m in computed})
    files = ["results/figures/rank_heatmap.png", *[f"results/figures/distributions_{f}.png" for f in families]]
    if report_metrics("cd_metrics"):
        files += [f"results/figures/critical_difference_{m}.png" for _, m in model_pairs()]
    if perturbed and report_metrics("curve_metrics"):
        files += [f"results/figures/robustness_curves_{m}.png" for _, m in model_pairs()]
    if perturbed and {"consistency", "responsiveness"} <= set(computed):
        files.append("results/figures/consistency_responsiveness.png")
    return files


PROVENANCE_OUTPUTS = [
    "results/provenance/provenance.html",
    "results/provenance/provenance.json",
    "results/tables/runtimes.csv",
    "results/tables/lineage.csv",
]


def provenance_inputs():
    """Every result the run makes, and the intermediate files between them (for the lineage)."""
    chain = [f"results/{d}/dataset.h5" for d in dict.fromkeys(d for d, _ in model_pairs())]
    chain += [f"results/{d}/{m}/model.pt" for d, m in model_pairs()]
    chain += metric_files()
    results = [f for f in all_outputs() if f not in PROVENANCE_OUTPUTS]
    return list(dict.fromkeys(chain + results))


def all_outputs():
    return [
        *PROVENANCE_OUTPUTS,
        *(["results/metrics.csv"] if METRICS_CSV else []),
        "results/tables/metric_summary.csv",
        "results/tables/friedman.csv",
        "results/tables/posthoc.csv",
        "results/tables/kruskal.csv",
        "results/tables/mixed_model.csv",
        "results/tables/models.csv",
        "results/tables/verdict.csv",
        "results/verdict/verdict.html",
        "results/verdict/verdict_summary.html",
        *[f"results/tables/{t}.csv.zip" for t in ("friedman", "posthoc", "kruskal", "mixed_model", "metric_summary")],
        *figure_files(),
        *gallery_files(),
        *[f for d, m in model_pairs() for f in heatmap_files(d, m)],
    ]


# Paper figures (rules/papers.smk)
def _model_method_names(model):
    """Labels and registered names of the methods a model runs (an alias label counts as its method)."""
    chosen = MODELS[model].get("methods") or list(config["cam"]["methods"])
    return [n for label in chosen for n in {label, method_of(label, config["cam"]["methods"][label])[0]}]


def paper_selection():
    """paper -> models it uses; papers whose domain no configured model has are left out."""
    keys = check_paper_keys(config["papers"]["include"] or list(PAPERS))
    methods = {m: _model_method_names(m) for m in MODELS}
    chosen = {k: paper_models(k, MODELS, {d: format_of(d) for d in DATASETS}, methods, config["papers"]["models"].get(k)) for k in keys}
    return {k: v for k, v in chosen.items() if v}


def metacam_models():
    return [m for m in paper_selection().get("kaczmarek2023_metacam", [])]


def cifake_pairs():
    return [(MODELS[m]["dataset"], m) for m in paper_selection().get("bird2023_cifake", [])]


def paper_figure_files():
    files = [f"results/papers/{k}.csv" for k in paper_selection()] + ["results/papers/index.csv"]
    files += [f"results/{d}/{m}/papers/cifake_gradcam.png" for d, m in cifake_pairs()]
    return files
