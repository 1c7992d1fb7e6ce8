# Config validation, names, wildcard constraints and input functions shared by every stage. The target and
# path logic is cambench.targets (plain functions of the config); these wrappers pass it wildcard values.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:
    from cambench import targets
    from cambench.jobs import HeatmapJob, MetricJob, TrainingJob, job_params
    from cambench.config import ConfigError, check_config, load_schema, schema_errors
    from cambench.data import split_size
    from cambench.papers import PAPERS
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


# GPU rules ask for one GPU each when the config's device is CUDA (locally `--resources gpu=N` runs N at a
# time; on SLURM the plugin requests it); cambench.targets.gpus_per_job says when.
GPUS_PER_JOB = targets.gpus_per_job(config["device"])
SHARD_SIZE = config["shards"]["size"]
_SPLIT_SIZES = {}


def split_items(dataset):
    """Items of cam.split in the prepared dataset (a checkpoint: known once prepare_dataset ran)."""
    path = checkpoints.prepare_dataset.get(dataset=dataset).output[0]
    key = (path, os.stat(path).st_mtime_ns)
    if key not in _SPLIT_SIZES:
        _SPLIT_SIZES[key] = split_size(path, config["cam"]["split"])
    return _SPLIT_SIZES[key]


def shard_rows(wildcards):
    return targets.shard_rows(wildcards.shard, SHARD_SIZE)


def _level_wildcards(w):
    return w.dataset, w.model, w.perturbation, w.level


def heatmap_shards(wildcards):
    shards = targets.shard_labels(split_items(wildcards.dataset), SHARD_SIZE)
    return targets.heatmap_shards(*_level_wildcards(wildcards), shards)


def metric_shards(wildcards):
    shards = targets.shard_labels(split_items(wildcards.dataset), SHARD_SIZE)
    return targets.metric_shards(*_level_wildcards(wildcards), shards)


# (kind, level) pairs of the sweep, clean images first.
SWEEP = targets.sweep(config)


def perturbation_params(wildcards):
    return targets.perturbation_params(config, wildcards.perturbation)


def perturbed_input(wildcards):
    return targets.perturbed_input(config, *_level_wildcards(wildcards), wildcards.shard) or []


def _in_workflow(target_function, *args):
    """A cambench.targets call whose ValueError (a path outside the config: a level not in the sweep, a
    model under another data set) stops the run as Snakemake's own error."""
    try:
        return target_function(*args)
    except ValueError as err:
        raise WorkflowError(str(err)) from None


def level_of(wildcards):
    return _in_workflow(targets.level_of, config, wildcards.perturbation, wildcards.level)


def model_spec(wildcards):
    return _in_workflow(targets.model_spec, config, wildcards.dataset, wildcards.model)


def heatmap_inputs(wildcards):
    return _in_workflow(targets.heatmap_inputs, config, *_level_wildcards(wildcards), wildcards.shard)


def heatmap_methods(wildcards, input):
    return targets.heatmap_methods(config, wildcards.model, input.get("sycam"))


# Decided once per run: 'auto' asks the cost plan for a bound on the table's rows.
METRICS_CSV = targets.metrics_csv_wanted(config, ".")


# Each job rule's one param: its settings from the config plus its wildcards' (cambench.jobs).
def training_job(wildcards):
    """The rule's one param: the model's settings from the config (cambench.jobs); model_spec checks
    that the model belongs to the wildcard's dataset."""
    model_spec(wildcards)
    return job_params(TrainingJob, config, model=wildcards.model, dataset=wildcards.dataset)


def heatmap_job(wildcards, input):
    """The rule's one param: the job's settings from the config plus those of its wildcards (cambench.jobs)."""
    return job_params(HeatmapJob, config, dataset=wildcards.dataset, model=wildcards.model,
                      perturbation=wildcards.perturbation, level=level_of(wildcards), shard=shard_rows(wildcards),
                      perturbation_params=perturbation_params(wildcards), methods=heatmap_methods(wildcards, input))


def metric_job(wildcards):
    """The rule's one param: the job's settings from the config plus those of its wildcards (cambench.jobs)."""
    return job_params(MetricJob, config, dataset=wildcards.dataset, model=wildcards.model,
                      perturbation=wildcards.perturbation, level=level_of(wildcards), shard=shard_rows(wildcards),
                      perturbation_params=perturbation_params(wildcards))
