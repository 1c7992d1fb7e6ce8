"""Configuration: JSON-schema validation with one-line messages naming the key, and the checks a
schema cannot express (registered names, parameters, cross-references, paths).

The workflow validates with ``snakemake.utils.validate`` (which also fills the schema defaults) and
then calls :func:`check_config`; :func:`validate_config` does both without Snakemake.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import jsonschema
import yaml

from .engine import METHODS, method_of
from .metrics import METRICS
from .models import ARCHITECTURES
from .perturbations import PERTURBATIONS

# Upper bounds on severity where a larger value is meaningless for [0, 1] pixel images.
LEVEL_LIMITS = {"gaussian": 1.0}


class ConfigError(ValueError):
    """A configuration mistake; the message names the key."""


def load_schema(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def describe_error(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    v, schema = error.validator, error.schema
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"config key '{key}': unknown key(s) {extra}; allowed: {', '.join(allowed)}"
    if v == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {schema['enum']}"
    if v == "type":
        return f"config key '{key}': expected {schema['type']}, got {error.instance!r}"
    if "propertyNames" in error.relative_schema_path:
        return (f"config key '{key}': name {error.instance!r} is not allowed; names must match "
                f"{schema.get('pattern', schema)} (they become file names)")
    if v in ("minProperties", "minItems"):
        return f"config key '{key}': must not be empty"
    if v == "required":
        return f"config key '{key}': {error.message}"
    return f"config key '{key}': {error.message}"


def schema_errors(config: dict, schema: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(e.absolute_path), e.validator))
    # propertyNames errors point at the parent; report the offending name itself.
    return [describe_error(e) for e in errors]


def _fill_defaults(config: dict, schema: dict) -> None:
    """Set schema defaults recursively (what snakemake.utils.validate(set_default=True) does)."""
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key not in config and "default" in sub:
            config[key] = _copy(sub["default"])
        if isinstance(config.get(key), dict) and "object" in _types(sub):
            _fill_defaults(config[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and "object" in _types(extra):
        for key, value in config.items():
            if key not in props and isinstance(value, dict):
                _fill_defaults(value, extra)


def _types(schema: dict) -> list:
    t = schema.get("type", [])
    return t if isinstance(t, list) else [t]


def _copy(value):
    return yaml.safe_load(yaml.safe_dump(value))


def validate_config(config: dict, schema_path: str | Path, workdir: str | Path = ".") -> dict:
    """Schema validation + defaults + :func:`check_config`; raises ConfigError naming the key."""
    schema = load_schema(schema_path)
    errors = schema_errors(config, schema)
    if errors:
        raise ConfigError(errors[0] + (f"  (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    _fill_defaults(config, schema)
    check_config(config, workdir)
    return config


def _check_params(registry, spec: dict, key: str) -> None:
    for label, params in spec.items():
        name, params = method_of(label, params) if registry.kind == "method" else (label, dict(params or {}))
        if name not in registry:
            raise ConfigError(f"config key '{key}.{label}': unknown {registry.kind} '{name}'; "
                              f"registered: {', '.join(registry.names())}")
        try:
            registry.get(name).check_params(params)
        except ValueError as err:
            raise ConfigError(f"config key '{key}.{label}': {err}") from None


def _check_sycam(config: dict) -> None:
    """Expressions parse; a searched expression has a usable metric, split and ground truth."""
    from .synthesis import TERMINALS, parse
    searched = []
    for label, params in config["cam"]["methods"].items():
        name, params = method_of(label, params)
        if name != "sycam":
            continue
        expression = params.get("expression", "gradcam")
        if expression == "search":
            searched.append(label)
        elif not str(expression).startswith("file:"):
            try:
                parse(expression)
            except ValueError as err:
                raise ConfigError(f"config key 'cam.methods.{label}.expression': {err}") from None
    if not searched:
        return
    search = config["cam"]["sycam"]
    if search["split"] == config["cam"]["split"]:
        raise ConfigError(f"config key 'cam.sycam.split': '{search['split']}' is the evaluation split "
                          f"(cam.split); search on another split")
    _check_params(METRICS, {search["metric"]: search.get("metric_params") or {}}, "cam.sycam.metric")
    unknown = sorted(set(search.get("terminals") or []) - set(TERMINALS))
    if unknown:
        raise ConfigError(f"config key 'cam.sycam.terminals': unknown {unknown}; available: {', '.join(TERMINALS)}")
    if "masks" in METRICS.get(search["metric"]).meta.get("needs", ()):
        for name, model in config["models"].items():
            if not set(searched) & set(model.get("methods") or config["cam"]["methods"]):
                continue
            dataset = config["datasets"][model["dataset"]]
            if not (is_standin(dataset) or dataset.get("mask_root")):
                raise ConfigError(f"config key 'cam.sycam.metric': '{search['metric']}' needs ground-truth "
                                  f"masks, but dataset '{model['dataset']}' (model '{name}') has no mask_root")


def is_standin(dataset: dict) -> bool:
    return dataset.get("standin", {}).get("kind", "none") != "none"


def check_config(config: dict, workdir: str | Path = ".") -> None:
    """Checks beyond the schema. Runs before any job, so every message names the config key."""
    workdir = Path(workdir)
    datasets, models = config["datasets"], config["models"]
    if not datasets:
        raise ConfigError("config key 'datasets': must not be empty")
    if not models:
        raise ConfigError("config key 'models': must not be empty")
    for name, ds in datasets.items():
        key = f"datasets.{name}"
        if is_standin(ds):
            if ds.get("root") or ds.get("mask_root"):
                raise ConfigError(f"config key '{key}': give either 'standin' (generated into "
                                  f"resources/{name}/) or 'root'/'mask_root', not both")
            counts = ds["standin"].get("counts", {})
            if not counts:
                raise ConfigError(f"config key '{key}.standin.counts': must not be empty")
        else:
            if not ds.get("root"):
                raise ConfigError(f"config key '{key}.root': required unless a stand-in is generated (standin.kind) "
                                  f"(a folder laid out as <root>/<split>/<class>/<image file>)")
            for sub in ("root", "mask_root"):
                if ds.get(sub) and not (workdir / ds[sub]).is_dir():
                    raise ConfigError(f"config key '{key}.{sub}': folder not found: {ds[sub]} "
                                      f"(expected layout <root>/<split>/<class>/<image file>)")
            root = workdir / ds["root"]
            split = config["cam"]["split"]
            if not (root / split).is_dir():
                raise ConfigError(f"config key '{key}.root': no '{split}' split folder (cam.split) in "
                                  f"{ds['root']}; found: {sorted(p.name for p in root.iterdir() if p.is_dir())}")
    for name, model in models.items():
        key = f"models.{name}"
        if model["dataset"] not in datasets:
            raise ConfigError(f"config key '{key}.dataset': unknown dataset '{model['dataset']}'; "
                              f"defined: {', '.join(datasets)}")
        if model["architecture"] not in ARCHITECTURES:
            raise ConfigError(f"config key '{key}.architecture': unknown architecture "
                              f"'{model['architecture']}'; registered: {', '.join(ARCHITECTURES.names())}")
        try:
            ARCHITECTURES.get(model["architecture"]).check_params(model.get("params") or {})
        except ValueError as err:
            raise ConfigError(f"config key '{key}.params': {err}") from None
        trainer = ARCHITECTURES.get(model["architecture"]).meta.get("trainer")
        if (model.get("train") or {}).get("aggregator_epochs") and not (
                trainer and "aggregator_epochs" in inspect.signature(trainer).parameters):
            raise ConfigError(f"config key '{key}.train.aggregator_epochs': architecture "
                              f"'{model['architecture']}' has no second training phase")
        standin_split = datasets[model["dataset"]]["standin"]["counts"] if is_standin(datasets[model["dataset"]]) else {}
        if standin_split and config["cam"]["split"] not in standin_split:
            raise ConfigError(f"config key 'cam.split': split '{config['cam']['split']}' is not generated "
                              f"by datasets.{model['dataset']}.standin.counts ({', '.join(standin_split)})")
        if standin_split and "train" not in standin_split:
            raise ConfigError(f"config key 'datasets.{model['dataset']}.standin.counts': a 'train' split "
                              f"is needed to train model '{name}'")
    _check_params(METHODS, config["cam"]["methods"], "cam.methods")
    for name, model in models.items():
        unknown = [m for m in model.get("methods") or [] if m not in config["cam"]["methods"]]
        if unknown:
            raise ConfigError(f"config key 'models.{name}.methods': {unknown} are not labels of cam.methods "
                              f"({', '.join(config['cam']['methods'])})")
    _check_sycam(config)
    kinds = {k: v for k, v in config["perturbations"].items()}
    _check_params(PERTURBATIONS, {k: {} for k in kinds}, "perturbations")
    for kind, levels in kinds.items():
        if kind == "none":
            raise ConfigError("config key 'perturbations.none': the clean images are always included; remove it")
        limit = LEVEL_LIMITS.get(kind, math.inf)
        bad = [lv for lv in levels if not 0 < lv <= limit]
        if bad:
            raise ConfigError(f"config key 'perturbations.{kind}': levels {bad} out of range (0, {limit}]")
    metrics = config["metrics"]["compute"]
    _check_params(METRICS, metrics, "metrics.compute")
    for name, params in metrics.items():
        if (params or {}).get("score"):
            raise ConfigError(f"config key 'metrics.compute.{name}.score': set the score once in 'metrics.score'")
    # Metrics comparing against the clean heatmaps (needs 'reference') only exist with a sweep.
    need_sweep = sorted(m for m in metrics if "reference" in METRICS.get(m).meta.get("needs", ()))
    if need_sweep and not kinds:
        raise ConfigError(f"config key 'metrics.compute': {need_sweep} need a perturbation sweep, "
                          f"but 'perturbations' is empty")
