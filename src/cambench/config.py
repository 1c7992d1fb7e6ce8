"""Configuration: JSON-schema validation with one-line messages naming the key, and the checks a
schema cannot express (registered names, parameters, cross-references, paths).

The workflow validates with ``snakemake.utils.validate`` (which also fills the schema defaults) and
then calls :func:`check_config`; :func:`validate_config` does both without Snakemake.
"""
from __future__ import annotations

import copy
import inspect
import math
from pathlib import Path

import jsonschema
import yaml

from .engine import METHODS, CamError, method_of, resolve_layer
from .metrics import METRICS
from .models import ARCHITECTURES, resolve_architecture
from .perturbations import PERTURBATIONS, perturbation_needs
from .registry import ParamError

# Upper bounds on severity where a larger value is meaningless for [0, 1] pixel images: each
# perturbation's registered max_level (declared once, on the registration).
LEVEL_LIMITS = {kind: PERTURBATIONS.get(kind).meta["max_level"] for kind in PERTURBATIONS.names()
                if "max_level" in PERTURBATIONS.get(kind).meta}


class ConfigError(ValueError):
    """A configuration mistake; the message names the key."""


def perturbation_sweep(config: dict) -> list[tuple[str, list[float], dict]]:
    """(kind, levels, params) of ``config['perturbations']``, whose entries are a list of levels or
    ``{levels: [...], params: {...}}`` (parameters of the kinds that take them, e.g. pgd's steps)."""
    out = []
    for kind, spec in (config.get("perturbations") or {}).items():
        if isinstance(spec, dict):
            out.append((kind, [float(v) for v in spec["levels"]], dict(spec.get("params") or {})))
        else:
            out.append((kind, [float(v) for v in spec], {}))
    return out


_SCHEMAS: dict = {}


def load_schema(path: str | Path) -> dict:
    """The parsed schema (parsed once per file version: validation runs per config, often in tests)."""
    key = (str(path), Path(path).stat().st_mtime_ns)
    if key not in _SCHEMAS:
        with open(path) as f:
            _SCHEMAS[key] = yaml.safe_load(f)
    return copy.deepcopy(_SCHEMAS[key])


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def describe_error(error: jsonschema.ValidationError) -> str:
    if error.validator == "oneOf" and error.context:
        # A value matching none of the alternatives: report what is wrong in the alternative of its
        # own type (a list of levels vs a {levels, params} mapping), not that it is not the other.
        same_type = [e for e in error.context
                     if not any(o.validator == "type" and not o.relative_path
                                and o.relative_schema_path[0] == e.relative_schema_path[0] for o in error.context)]
        error = jsonschema.exceptions.best_match(same_type or error.context)
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
    if "propertyNames" in error.relative_schema_path or (v == "pattern" and schema.get("x-name")):
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
    return copy.deepcopy(value)


def validate_config(config: dict, schema_path: str | Path, workdir: str | Path = ".") -> dict:
    """Schema validation + defaults + :func:`check_config`; raises ConfigError naming the key."""
    schema = load_schema(schema_path)
    errors = schema_errors(config, schema)
    if errors:
        raise ConfigError(errors[0] + (f"  (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    _fill_defaults(config, schema)
    check_config(config, workdir)
    return config


def _check_params(registry, spec: dict, key: str, params_key: str | None = None) -> None:
    """Names registered, parameters known, of their type and within the bounds their registration
    declares; the message names the parameter's own key (``params_key`` when they live elsewhere)."""
    for label, params in spec.items():
        name, params = method_of(label, params) if registry.kind == "method" else (label, dict(params or {}))
        if name not in registry:
            raise ConfigError(f"config key '{key}.{label}': unknown {registry.kind} '{name}'; "
                              f"registered: {', '.join(registry.names())}")
        try:
            registry.get(name).check_params(params)
        except ValueError as err:
            raise ConfigError(f"config key '{params_key or f'{key}.{label}'}{_dot(err)}': {err}") from None


def _dot(err: ValueError) -> str:
    """'.<parameter>' where the error names one parameter (a ParamError), to extend the config key."""
    return f".{err.param}" if isinstance(err, ParamError) and err.param else ""


def _check_sycam(config: dict, workdir: Path) -> None:
    """Expressions parse; a searched expression has a usable metric, split and ground truth."""
    from .sycam import TERMINALS, parse
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
    if search["metric"] not in METRICS:
        raise ConfigError(f"config key 'cam.sycam.metric': unknown metric '{search['metric']}'; "
                          f"registered: {', '.join(METRICS.names())}")
    _check_params(METRICS, {search["metric"]: search.get("metric_params") or {}}, "cam.sycam.metric",
                  "cam.sycam.metric_params")
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
    for name, model in config["models"].items():
        if set(searched) & set(model.get("methods") or config["cam"]["methods"]):
            missing = _missing_split(model["dataset"], config["datasets"][model["dataset"]], search["split"], workdir)
            if missing:
                raise ConfigError(f"config key 'cam.sycam.split': {missing} (model '{name}' searches on it)")


def _missing_split(name: str, ds: dict, split: str, workdir: Path) -> str:
    """Why dataset ``name`` will not have ``split`` ('' where it will or cannot be told before preparing)."""
    from .data import FORMATS, standin_format
    fmt = standin_format(ds["standin"]["kind"]) if is_standin(ds) else ds.get("format", "imagefolder")
    if FORMATS.get(fmt).meta["splits"] == "assigned":
        return "" if split in ("train", "test") else \
            f"format '{fmt}' of dataset '{name}' has the splits train and test (options.test_fraction), not '{split}'"
    if fmt == "imagenet":
        only = _imagenet_split(ds)
        return "" if split == only else f"dataset '{name}' (format imagenet) has the one split '{only}' " \
                                        f"(datasets.{name}.options.split), not '{split}'"
    generated = _native_standin_splits(ds)
    if generated:
        return "" if split in generated else \
            f"split '{split}' is not generated by datasets.{name}.standin.counts ({', '.join(generated)})"
    if not is_standin(ds) and fmt == "imagefolder" and ds.get("root") and not (workdir / ds["root"] / split).is_dir():
        return f"no '{split}' split folder in {ds['root']} (dataset '{name}')"
    return ""


def _imagenet_split(ds: dict) -> str:
    return (ds.get("options") or {}).get("split", "val")


def _check_preprocessing(key: str, ds: dict, fmt: str, dims: int, workdir: Path, standin: bool) -> None:
    """classes, resize and crop: what the readers cannot check before decoding."""
    classes = ds.get("classes") or []
    if isinstance(classes, list):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        if dup:
            raise ConfigError(f"config key '{key}.classes': duplicate class name(s) {dup}")
    elif not (standin and Path(classes).parts[:1] == ("resources",)):  # a stand-in writes its own file
        if not (workdir / classes).is_file():
            raise ConfigError(f"config key '{key}.classes': file not found: {classes} (one class per line, "
                              f"first token = the folder / annotation name, e.g. LOC_synset_mapping.txt)")
        from .data import DataError, read_class_mapping
        try:
            read_class_mapping(str(workdir / classes), where=f"{key}.classes")
        except DataError as err:
            raise ConfigError(f"config key '{key}.classes': {err}") from None
    for sub in ("resize", "crop"):
        if ds.get(sub) and dims != 2:
            raise ConfigError(f"config key '{key}.{sub}': format '{fmt}' holds volumes; resize and crop are "
                              f"for 2D image formats")
    if ds.get("resize") and ds.get("crop") and ds["crop"] > ds["resize"]:
        raise ConfigError(f"config key '{key}.crop': {ds['crop']} is larger than resize {ds['resize']} (the "
                          f"shorter side after resizing); torchvision's evaluation uses e.g. resize 256, crop 224")


def standin_params(kind: str) -> dict:
    """The parameters (with defaults) a non-shapes stand-in ``kind`` takes in ``standin.params``: the
    keyword arguments of its format's generator, less the counts and seed the workflow passes."""
    from .data import FORMATS, standin_format
    generator = FORMATS.get(standin_format(kind)).meta["standin"]
    return {p.name: p.default for p in inspect.signature(generator).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("counts", "seed")}


def _check_names(key: str, ds: dict) -> None:
    """The names a registry knows (the format, the stand-in kind, the shape classes): checked here, not
    listed in the schema, so that a format registered in cambench.data is known everywhere at once."""
    from .data import FORMATS, SHAPES, STANDIN_FORMATS
    fmt = ds.get("format", "imagefolder")
    if fmt not in FORMATS:
        raise ConfigError(f"config key '{key}.format': unknown format {fmt!r}; registered: "
                          f"{', '.join(FORMATS.names())}")
    standin = ds.get("standin") or {}
    kind = standin.get("kind", "none")
    if kind != "none" and kind not in STANDIN_FORMATS:
        raise ConfigError(f"config key '{key}.standin.kind': {kind!r} is not allowed; stand-in kinds: none, "
                          f"{', '.join(sorted(STANDIN_FORMATS))}")
    for i, shape in enumerate(standin.get("classes") or []):
        if shape not in SHAPES:
            raise ConfigError(f"config key '{key}.standin.classes.{i}': {shape!r} is not allowed; allowed values: "
                              f"{list(SHAPES)}")


def _check_dataset(name: str, ds: dict, split: str, workdir: Path, trains: bool = True) -> None:
    """Format, options, stand-in parameters, and (for real data) the layout on disk. ``trains``:
    some model trains on this dataset (else no train split is needed)."""
    from .data import FORMATS, DataError, check_source, item_dims, standin_format
    key = f"datasets.{name}"
    _check_names(key, ds)
    fmt = ds.get("format", "imagefolder")
    if is_standin(ds):
        kind = ds["standin"]["kind"]
        implied = standin_format(kind)
        if fmt not in ("imagefolder", implied):
            raise ConfigError(f"config key '{key}.format': stand-in '{kind}' is written in format '{implied}', "
                              f"not '{fmt}'; drop 'format' or make them agree")
        fmt = implied
        if ds.get("root") or ds.get("mask_root"):
            raise ConfigError(f"config key '{key}': give either 'standin' (generated into "
                              f"resources/{name}/) or 'root'/'mask_root', not both")
        if not ds["standin"].get("counts"):
            raise ConfigError(f"config key '{key}.standin.counts': must not be empty")
        params = ds["standin"].get("params") or {}
        if kind == "shapes" and params:
            raise ConfigError(f"config key '{key}.standin.params': the shapes stand-in takes its keys "
                              f"(classes, image_size, clutter, noise) in 'standin' itself")
        if kind != "shapes":
            allowed = standin_params(kind)
            unknown = sorted(set(params) - set(allowed))
            if unknown:
                raise ConfigError(f"config key '{key}.standin.params': unknown parameter(s) {unknown} of the "
                                  f"'{kind}' stand-in; allowed: {sorted(allowed) or 'none'}")
    entry = FORMATS.get(fmt)
    try:
        entry.check_params(ds.get("options") or {})
    except ValueError as err:
        raise ConfigError(f"config key '{key}.options': {err}") from None
    if ds.get("mask_root") and entry.meta["dims"] != 2:
        raise ConfigError(f"config key '{key}.mask_root': format '{fmt}' reads its own masks; "
                          f"mask_root is for 2D image formats")
    if entry.meta["splits"] == "assigned" and split not in ("train", "test"):
        raise ConfigError(f"config key 'cam.split': format '{fmt}' of dataset '{name}' has the splits "
                          f"train and test (options.test_fraction), not '{split}'")
    dims = item_dims(fmt, ds.get("options") or {})
    if fmt == "imagenet":
        if split != _imagenet_split(ds):
            raise ConfigError(f"config key 'cam.split': dataset '{name}' (format imagenet) has the one split "
                              f"'{_imagenet_split(ds)}' (datasets.{name}.options.split), not '{split}'")
        if trains:
            raise ConfigError(f"config key 'datasets.{name}': format imagenet is an evaluation set (one split); "
                              f"models on it must not train (models.<name>.train.epochs: 0)")
    if is_standin(ds):
        _check_preprocessing(key, ds, fmt, dims, workdir, standin=True)
        return
    layout = entry.meta["layout"]
    if not ds.get("root"):
        raise ConfigError(f"config key '{key}.root': required unless a stand-in is generated (standin.kind) "
                          f"(format '{fmt}': {layout})")
    for sub in ("root", "mask_root"):
        if ds.get(sub) and not (workdir / ds[sub]).is_dir():
            raise ConfigError(f"config key '{key}.{sub}': folder not found: {ds[sub]} (format '{fmt}', "
                              f"expected layout {layout})")
    root = workdir / ds["root"]
    _check_preprocessing(key, ds, fmt, dims, workdir, standin=False)
    try:
        check_source(fmt, root, ds.get("options") or {})
    except DataError as err:
        raise ConfigError(f"config key '{key}.root': {err}") from None
    if fmt == "imagefolder":
        needed_splits = [("train", "models train on it")] if trains else []
        for needed, why in needed_splits + [(split, "cam.split")]:
            if not (root / needed).is_dir():
                raise ConfigError(f"config key '{key}.root': no '{needed}' split folder ({why}) in {ds['root']}; "
                                  f"found: {sorted(p.name for p in root.iterdir() if p.is_dir())} "
                                  f"(expected layout {layout})")


def _native_standin_splits(ds: dict) -> dict:
    """A stand-in's counts per split, for formats whose layout names the splits (else {})."""
    from .data import FORMATS, standin_format
    if not is_standin(ds) or FORMATS.get(standin_format(ds["standin"]["kind"])).meta["splits"] != "native":
        return {}
    return ds["standin"]["counts"]


def dataset_dims(ds: dict) -> int:
    """2 for image items, 3 for volume items, from the dataset's format and options."""
    from .data import item_dims, standin_format
    fmt = standin_format(ds["standin"]["kind"]) if is_standin(ds) else ds.get("format", "imagefolder")
    return item_dims(fmt, ds.get("options") or {})


def _check_dims(name: str, model: dict, arch, ds: dict) -> None:
    """A 2D model on volumes (or the reverse) would fail deep inside torch; say so up front."""
    dims = (model.get("params") or {}).get("dims", arch.meta.get("dims", arch.parameters().get("dims")))
    if dims is None:
        return
    have = dataset_dims(ds)
    if int(dims) != have:
        raise ConfigError(f"config key 'models.{name}.architecture': '{model['architecture']}' takes "
                          f"{dims}D inputs, but dataset '{model['dataset']}' holds {have}D "
                          f"{'volumes' if have == 3 else 'images'}")


def _meta_model(name: str, model: dict, arch):
    """The model's architecture built on the meta device: its layer names, without weights, memory or
    data (the class count does not change them). None for a 'module:function' architecture that does
    not build there: user code is judged when its job builds it."""
    import sys

    import torch
    params = model.get("params") or {}
    source = getattr(sys.modules.get(arch.fn.__module__), "__file__", None)
    if "torchvision" not in sys.modules and source and "import torchvision" in Path(source).read_text():
        # imported here, not first inside the meta context, which would make its import-time tensors meta
        import torchvision  # noqa: F401
    try:
        with torch.device("meta"):
            return arch.fn(**{"n_classes": 2, **params})
    except Exception as err:  # noqa: BLE001 -- any failure of the builder is the config's problem
        if ":" in model["architecture"]:
            return None
        raise ConfigError(f"config key 'models.{name}.params': architecture '{model['architecture']}' cannot be "
                          f"built with {params}: {type(err).__name__}: {err}") from None


def _layer_problem(net, layer, where: str) -> str:
    """'' if ``layer`` names a module of ``net``, else why not (``where``: the architecture and model),
    with the engine's reason (resolve_layer)."""
    if not isinstance(layer, str) or not layer:
        return f"expected a dotted layer name of {where}, got {layer!r}"
    try:
        resolve_layer(net, layer)
    except CamError as err:
        text = str(err)
        prefix = f"target_layer '{layer}': "
        return f"no layer '{layer}' in {where} ({text[len(prefix):] if text.startswith(prefix) else text})"
    return ""


def _check_layers(config: dict) -> None:
    """Every layer a job will hook exists: each model's target layer and the extra layers / head its
    methods name (layercam_ms layers, MetaCAM components' layers, CAM's fc_layer), resolved on the
    architecture built on the meta device, before any job."""
    methods = config["cam"]["methods"]
    wanted = {}  # label -> [(config key, layer)]
    for label, params in methods.items():
        name, params = method_of(label, params)
        entry = METHODS.get(name)
        try:  # extra_layers also checks what it reads (e.g. MetaCAM's components and their parameters)
            extra = entry.meta.get("extra_layers")
            layers = list(extra({**entry.parameters(), **params})) if extra is not None else []
        except (ValueError, KeyError, TypeError) as err:  # CamError is a ValueError
            raise ConfigError(f"config key 'cam.methods.{label}': {err}") from None
        key = next((f"cam.methods.{label}.{k}" for k in ("layers", "component_params") if k in params),
                   f"cam.methods.{label}")
        wanted[label] = [(key, layer) for layer in layers]
        if params.get("fc_layer"):
            wanted[label].append((f"cam.methods.{label}.fc_layer", params["fc_layer"]))
    for name, model in config["models"].items():
        arch = resolve_architecture(model["architecture"])
        net = _meta_model(name, model, arch)
        if net is None:
            continue
        target = model.get("target_layer") or arch.meta.get("default_target_layer")
        problem = _layer_problem(net, target, f"architecture '{model['architecture']}'")
        if problem:
            raise ConfigError(f"config key 'models.{name}.target_layer': {problem}")
        for label in model.get("methods") or methods:
            for key, layer in wanted[label]:
                problem = _layer_problem(net, layer, f"architecture '{model['architecture']}' of model '{name}'")
                if problem:
                    raise ConfigError(f"config key '{key}': {problem}")


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
    training = {m["dataset"] for m in models.values() if (m.get("train") or {}).get("epochs", 1)}
    for name, ds in datasets.items():
        _check_dataset(name, ds, config["cam"]["split"], workdir, trains=name in training)
    for name, model in models.items():
        key = f"models.{name}"
        if model["dataset"] not in datasets:
            raise ConfigError(f"config key '{key}.dataset': unknown dataset '{model['dataset']}'; "
                              f"defined: {', '.join(datasets)}")
        try:
            arch = resolve_architecture(model["architecture"])
        except (KeyError, ValueError) as err:
            text = str(err.args[0]) if err.args else str(err)  # a KeyError's str() adds quotes
            known = "" if "registered:" in text else f"; registered: {', '.join(ARCHITECTURES.names())}"
            raise ConfigError(f"config key '{key}.architecture': {text}{known} "
                              f"(or 'module:function')") from None
        try:
            arch.check_params(model.get("params") or {})
        except ValueError as err:
            raise ConfigError(f"config key '{key}.params{_dot(err)}': {err}") from None
        if not (model.get("target_layer") or arch.meta.get("default_target_layer")):
            raise ConfigError(f"config key '{key}.target_layer': architecture '{model['architecture']}' has no "
                              f"default target layer; name one (a dotted module name, e.g. net.layer4)")
        trainer = arch.meta.get("trainer")
        if (model.get("train") or {}).get("aggregator_epochs") and not (
                trainer and "aggregator_epochs" in inspect.signature(trainer).parameters):
            raise ConfigError(f"config key '{key}.train.aggregator_epochs': architecture "
                              f"'{model['architecture']}' has no second training phase")
        weights = model.get("weights") or ""
        if weights and not (workdir / weights).is_file():
            raise ConfigError(f"config key '{key}.weights': file not found: {weights} "
                              f"(a local weights file; nothing is downloaded)")
        if model.get("weights_exclude") and not weights:
            raise ConfigError(f"config key '{key}.weights_exclude': set only together with '{key}.weights'")
        if (model.get("train") or {}).get("epochs", 1) == 0 and not weights:
            raise ConfigError(f"config key '{key}.train.epochs': 0 epochs (no training) needs '{key}.weights'")
        _check_dims(name, model, arch, datasets[model["dataset"]])
        standin_split = _native_standin_splits(datasets[model["dataset"]])
        if standin_split and config["cam"]["split"] not in standin_split:
            raise ConfigError(f"config key 'cam.split': split '{config['cam']['split']}' is not generated "
                              f"by datasets.{model['dataset']}.standin.counts ({', '.join(standin_split)})")
        if standin_split and "train" not in standin_split and (model.get("train") or {}).get("epochs", 1):
            raise ConfigError(f"config key 'datasets.{model['dataset']}.standin.counts': a 'train' split "
                              f"is needed to train model '{name}'")
    _check_params(METHODS, config["cam"]["methods"], "cam.methods")
    for name, model in models.items():
        unknown = [m for m in model.get("methods") or [] if m not in config["cam"]["methods"]]
        if unknown:
            raise ConfigError(f"config key 'models.{name}.methods': {unknown} are not labels of cam.methods "
                              f"({', '.join(config['cam']['methods'])})")
    _check_layers(config)
    _check_sycam(config, workdir)
    kinds = {kind: levels for kind, levels, _ in perturbation_sweep(config)}
    for kind, levels, params in perturbation_sweep(config):
        if kind == "none":
            raise ConfigError("config key 'perturbations.none': the clean images are always included; remove it")
        if kind not in PERTURBATIONS:
            raise ConfigError(f"config key 'perturbations.{kind}': unknown perturbation '{kind}'; "
                              f"registered: {', '.join(PERTURBATIONS.names())}")
        if params and not perturbation_needs(kind):
            raise ConfigError(f"config key 'perturbations.{kind}.params': perturbation '{kind}' takes no parameters")
        if params:
            _check_params(PERTURBATIONS, {kind: params}, "perturbations", f"perturbations.{kind}.params")
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
    for key in ("stats.mixed_model_metrics", "report.curve_metrics", "report.cd_metrics"):
        section, name = key.split(".")
        bad = [m for m in (config.get(section) or {}).get(name) or [] if m not in METRICS]
        if bad:
            raise ConfigError(f"config key '{key}': unknown metric(s) {bad}; registered: {', '.join(METRICS.names())}")
    _check_papers(config)


def _check_papers(config: dict) -> None:
    from .papers import PAPERS
    papers = config.get("papers") or {}
    unknown = [k for k in papers.get("include") or [] if k not in PAPERS]
    if unknown:
        raise ConfigError(f"config key 'papers.include': unknown paper(s) {unknown}; available: {', '.join(PAPERS)}")
    for key, models in (papers.get("models") or {}).items():
        if key not in PAPERS:
            raise ConfigError(f"config key 'papers.models.{key}': unknown paper; available: {', '.join(PAPERS)}")
        missing = [m for m in models if m not in config["models"]]
        if missing:
            raise ConfigError(f"config key 'papers.models.{key}': unknown model(s) {missing}; "
                              f"configured: {', '.join(config['models'])}")
    components = (papers.get("metacam") or {}).get("components") or []
    bad = [c for c in components if c not in METHODS]
    if bad:
        raise ConfigError(f"config key 'papers.metacam.components': unknown method(s) {bad}; "
                          f"registered: {', '.join(METHODS.names())}")
