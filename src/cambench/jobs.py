"""The settings of one workflow job as a typed, frozen object (docs/design.md §4).

Each job kind (heatmaps, metrics, training) is a dataclass whose fields are its settings. A field read
from the config names its place there (``setting("cam.dtype")``), so a setting is spelled in three
places only: config/schema.yaml, the config, and the field here. A rule passes one param,
``job=job_params(HeatmapJob, config, **per_job)`` (the config's settings plus what depends on the job's
wildcards), its script calls ``HeatmapJob.from_params(snakemake.params.job)``, and the pipeline
function takes ``(paths..., job)``.

This module imports nothing heavy: the rules import it when the workflow is parsed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields


def setting(path: str, **kwargs):
    """A field read from the config at the dotted ``path``; ``{model}`` in it is the job's model
    (``models.{model}.weights``). ``kwargs`` go to :func:`dataclasses.field` (a default)."""
    return field(metadata={"config": path}, **kwargs)


class _Job:
    """What every job class shares: building it from the rule's params, with errors that name the key."""

    @classmethod
    def from_params(cls, params: dict):
        """The job from the rule's ``job`` param (a dict of setting -> value). An unknown key or a
        missing setting without a default raises ValueError naming it (and its config key)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown setting(s) {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(known)})")
        missing = [f for f in known.values() if f.name not in params and _required(f)]
        if missing:
            named = ", ".join(repr(f.name) + (f" (config: {f.metadata['config']})" if "config" in f.metadata else "")
                              for f in missing)
            raise ValueError(f"{cls.__name__}: missing setting(s) {named}")
        return cls(**params)


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def job_params(job_class: type, config: dict, **per_job) -> dict:
    """A rule's ``job`` param: every config-read field of ``job_class`` from ``config``, plus ``per_job``
    (the settings that depend on the wildcards; they win). A config key that is absent is left out,
    so the field's default applies, or :meth:`from_params` names it as missing."""
    params = {}
    for f in fields(job_class):
        path = f.metadata.get("config")
        if path is None or f.name in per_job:
            continue
        try:
            path = path.format(**per_job)
        except KeyError as err:
            raise ValueError(f"{job_class.__name__}.{f.name} is read from {path}: give {err.args[0]}=... "
                             f"to job_params") from None
        value = config
        for key in path.split("."):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            params[f.name] = value
    return {**params, **per_job}


@dataclass(frozen=True, kw_only=True)
class HeatmapJob(_Job):
    """Every CAM method for one (perturbation, level) on the split or one shard of it (rule heatmaps)."""

    perturbation: str
    level: float
    methods: dict  # label -> parameters, as cam.methods (restricted to the model's own list)
    perturbation_params: dict = field(default_factory=dict)
    shard: Sequence[int] | None = None  # (start, stop) rows of the split; None = all of it
    dataset: str = ""  # names recorded in the heatmap file's attributes (when given)
    model: str = ""
    target_layer: str = setting("models.{model}.target_layer", default="")  # '' = the architecture's default
    split: str = setting("cam.split")
    class_source: str = setting("cam.class_source")
    batch_size: int = setting("cam.batch_size")
    dtype: str = setting("cam.dtype")
    seed: int = setting("seed")
    device: str = setting("device", default="auto")
    memory_mb: float = setting("cam.memory_mb", default=1024.0)
    store: str = setting("cam.store", default="feature")


@dataclass(frozen=True, kw_only=True)
class MetricJob(_Job):
    """Every metric of every method for one (perturbation, level) on the split or one shard (rule metrics)."""

    dataset: str  # names written into every row of the table
    model: str
    perturbation: str
    level: float
    perturbation_params: dict = field(default_factory=dict)
    shard: Sequence[int] | None = None
    metrics: dict = setting("metrics.compute")  # name -> parameters
    score: str = setting("metrics.score")
    memory_mb: float = setting("metrics.memory_mb")
    split: str = setting("cam.split")
    batch_size: int = setting("cam.batch_size", default=64)
    seed: int = setting("seed")
    device: str = setting("device", default="auto")


@dataclass(frozen=True, kw_only=True)
class TrainingJob(_Job):
    """Build, optionally load weights, train and evaluate one model (rule train_model)."""

    model: str = ""  # the model's name in the config (error messages)
    dataset: str = ""
    architecture: str = setting("models.{model}.architecture")
    params: dict = setting("models.{model}.params")
    train: dict = setting("models.{model}.train")
    weights: str = setting("models.{model}.weights", default="")
    weights_exclude: Sequence[str] = setting("models.{model}.weights_exclude", default=())
    eval_split: str = setting("cam.split", default="test")
    seed: int = setting("seed")
    device: str = setting("device", default="auto")
