"""Workflow stages as plain functions: each script in ``scripts/`` calls exactly one of them.

All of them take paths and plain parameters or a job's settings as a typed object (cambench.jobs;
docs/design.md §4), never Snakemake objects, so they are importable and tested without Snakemake.
"""
from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .data import prepare, read_dataset, split_size
from .engine import METHODS, explain_many, method_applies, method_of
from .jobs import HeatmapJob, MetricJob, TrainingJob
from .methods.metacam import cumulative_residual_effect, ensemble_sweep
from .metrics import METRICS, evaluate_applies
from .metrics.localisation import label_class_boxes
from .models import (
    build_model,
    default_target_layer,
    load_checkpoint,
    load_weights,
    resolve_architecture,
    save_checkpoint,
    train_classifier,
)
from .perturbations import perturb, perturbation_needs
from .plan import metric_progress_steps
from .provenance import provenance
from .store import HeatmapWriter, read_heatmaps
from .tables import METRIC_COLUMNS, write_partition
from .utils import atomic_path, json_attribute, pick_device

log = logging.getLogger("cambench")



PROGRESS_LOG_SECONDS = 30.0  # a job log gets a progress line at most this often (a terminal every 5 s)


class _LineStream:
    """tqdm's refreshes, each on a line of its own: in a job log (a file) the carriage returns of a
    terminal bar would pile every refresh of a job onto one ever-growing line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _progress(total: float, desc: str, unit: str = "it") -> tqdm:
    """A progress bar with elapsed and remaining time ("[05:02<01:54, ...]"), on stderr: in a job the
    log file (scripting.logged), one line per refresh, at most every PROGRESS_LOG_SECONDS."""
    stream = sys.stderr
    terminal = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit != "it", ascii=True,
                file=stream if terminal else _LineStream(stream),
                mininterval=5.0 if terminal else PROGRESS_LOG_SECONDS, ncols=None if terminal else 100)


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def prepare_dataset(fmt: str, root: str | Path, output: str | Path, *, mask_root: str | Path | None = None,
                    options: dict | None = None, channels: int = 3, seed: int = 0,
                    classes: list[str] | str | None = None, resize: int = 0, crop: int = 0,
                    config: dict | None = None) -> dict:
    """``classes``: the class mapping (a list, or a file relative to the working directory, like
    ``root``); ``resize`` / ``crop``: torchvision's evaluation Resize / CenterCrop (0 = off)."""
    summary = prepare(fmt, root, output, mask_root=mask_root or None, options=options, seed=seed,
                      channels=channels, classes=classes or None, resize=int(resize or 0), crop=int(crop or 0),
                      attrs={"provenance": _json(provenance(config))})
    shown = {**summary, "classes": f"{len(summary['classes'])} classes"} if len(summary["classes"]) > 20 else summary
    log.info("prepared %s: %s", output, shown)
    return summary


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

def model_normalisation(architecture: str, params: dict, train: dict, dataset_mean: list[float],
                        dataset_std: list[float], channels: int) -> dict:
    """The ``mean``/``std`` a model is built with (its Normalize in front of the network).

    ``params.mean``/``params.std`` win. Otherwise torchvision architectures get ImageNet's (their
    builder's default: what pretrained weights expect). Other architectures are trained on the
    dataset's own statistics; an evaluation-only 'module:function' model (``train.epochs`` 0) gets
    the identity (mean 0, std 1): its function is taken to normalise its input itself (docs/models.md §2).
    """
    if "mean" in params or "std" in params:
        return {}
    if resolve_architecture(architecture).meta.get("imagenet_normalisation"):
        return {"mean": None, "std": None}
    if not train["epochs"] and ":" in architecture:
        return {"mean": [0.0] * channels, "std": [1.0] * channels}
    return {"mean": dataset_mean, "std": dataset_std}


def _top_k_accuracy(model, ds, dev, batch_size: int = 256, k: int = 5) -> tuple[float, float]:
    """Top-1 and top-k accuracy over a dataset, batch by batch from its uint8 images (a 224 px
    validation set does not fit on a device as float)."""
    top1 = topk = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            index = slice(start, min(start + batch_size, len(ds)))
            logits = model(ds.pixels(index, dev))
            labels = torch.from_numpy(ds.labels[index]).to(dev)
            ranked = logits.topk(min(k, logits.shape[1]), dim=1).indices
            top1 += int((ranked[:, 0] == labels).sum())
            topk += int((ranked == labels[:, None]).any(dim=1).sum())
    return top1 / max(len(ds), 1), topk / max(len(ds), 1)


def train_model(dataset_path: str | Path, output_model: str | Path, output_metrics: str | Path, job: TrainingJob,
                *, config: dict | None = None) -> dict:
    """Build, optionally load local ``job.weights``, train (unless ``job.train['epochs']`` is 0: then no
    train split is read or needed), check that the model emits one logit per class of the dataset's
    class mapping, record accuracy on ``job.eval_split``, and write the checkpoint. ``config``: for the
    provenance record only."""
    architecture, params, train, seed = job.architecture, job.params, job.train, job.seed
    eval_split, weights = job.eval_split, job.weights
    dev = pick_device(job.device)
    test_set = read_dataset(dataset_path, eval_split)
    train_set = read_dataset(dataset_path, "train") if train["epochs"] else None
    stats_set = train_set or test_set  # the file's mean/std: the train split's, else all images'
    channels = int(test_set.images.shape[1])
    arch_params = {"n_classes": len(test_set.class_names), "in_channels": channels,
                   **model_normalisation(architecture, params, train, stats_set.mean, stats_set.std, channels),
                   **params}
    torch.manual_seed(seed)
    model = build_model(architecture, **arch_params)
    loaded = load_weights(model, weights, exclude=list(job.weights_exclude)) if weights else None
    if loaded:
        log.info("weights from %s: %s", weights, loaded)
    model = model.to(dev)
    _check_logits(model, test_set, dev, job.model or architecture, job.dataset)
    start = time.perf_counter()
    history = []
    if train["epochs"]:  # 0 epochs: the loaded weights as they are
        trainer = resolve_architecture(architecture).meta.get("trainer", train_classifier)
        # Two-phase trainers (multi_exit_cnn) take the second phase's epochs; 0 means as many as 'epochs'.
        phases = {"aggregator_epochs": train.get("aggregator_epochs") or train["epochs"]} \
            if "aggregator_epochs" in inspect.signature(trainer).parameters else {}
        x, y = train_set.pixels(slice(None), dev), torch.from_numpy(train_set.labels).to(dev)
        with _progress(train["epochs"] + sum(phases.values()), "train epochs") as bar:
            history = trainer(model, x, y, epochs=train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
                              weight_decay=train["weight_decay"], seed=seed, progress=bar, **phases)
        del x, y
    seconds = time.perf_counter() - start
    test_acc, test_top5 = _top_k_accuracy(model, test_set, dev)
    train_acc = _top_k_accuracy(model, train_set, dev)[0] if train_set is not None else None
    present = len(set(test_set.labels.tolist()))
    result = {"architecture": architecture, "params": {k: v for k, v in params.items()},
              "train_accuracy": train_acc, "test_accuracy": test_acc, "test_top5_accuracy": test_top5,
              "eval_split": eval_split, "n_train": len(train_set) if train_set is not None else 0,
              "n_test": len(test_set), "n_classes": len(test_set.class_names), "classes_present": present,
              "chance": 1 / len(test_set.class_names), "train_seconds": seconds, "history": history,
              "epochs": train["epochs"], "weights": str(weights or ""), "weights_loaded": loaded,
              "normalisation": {k: arch_params.get(k) for k in ("mean", "std")},
              "provenance": provenance(config, [dataset_path, *([weights] if weights else [])], seed, dev)}
    log.info("test accuracy %.4f (top-5 %.4f; train %s) in %.1fs", test_acc, test_top5,
             "-" if train_acc is None else f"{train_acc:.4f}", seconds)
    minimum = train.get("min_test_accuracy", 0.0)
    if test_acc < minimum:
        raise RuntimeError(f"test accuracy {test_acc:.4f} is below models.*.train.min_test_accuracy={minimum}")
    save_checkpoint(output_model, model.cpu(), architecture, arch_params,
                    extra={"class_names": test_set.class_names, "test_accuracy": test_acc})
    with atomic_path(output_metrics) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, default=str))
    return result


def _check_logits(model, ds, dev, name: str, dataset: str) -> None:
    """One forward of one image: the model's logits must be one per class of the dataset's mapping,
    or every accuracy and every class-indexed map would be silently wrong."""
    model.eval()
    with torch.no_grad():
        n_logits = model(ds.pixels(slice(0, 1), dev)).shape[-1]
    if n_logits != len(ds.class_names):
        where = f"datasets.{dataset}.classes" if dataset else "the dataset's classes"
        raise ValueError(f"model '{name}' produces {n_logits} logits but dataset '{dataset or ds.path}' has "
                         f"{len(ds.class_names)} classes ({where}); labels index the model's outputs, so the "
                         f"two must agree: give {where} the model's full class list in its output order "
                         f"(e.g. ImageNet's LOC_synset_mapping.txt for a 1000-way head)")


def load_model(model_path: str | Path, dev: torch.device):
    model, payload = load_checkpoint(model_path, map_location=dev)
    return model.eval(), payload


# ------------------------------------------------------------------------------------------------
# Heatmaps
# ------------------------------------------------------------------------------------------------

def read_shard(dataset_path: str | Path, split: str, shard: tuple[int, int] | None):
    """The split, or its items [start, stop) (one shard: only those are read from disk)."""
    if shard is None:
        return read_dataset(dataset_path, split)
    start, stop = (int(v) for v in shard)
    ds = read_dataset(dataset_path, split, slice(start, stop))
    if len(ds) == 0:
        raise ValueError(f"{dataset_path}: shard [{start}, {stop}) of split '{split}' is empty "
                         f"(the split has {split_size(dataset_path, split)} items)")
    return ds


def perturbed_pixels(ds, index: slice, perturbation: str, level: float, seed: int, dev, *,
                     model: torch.nn.Module | None = None, target_layer: str = "", params: dict | None = None,
                     batch_size: int = 64, stored: str | Path | None = None) -> torch.Tensor:
    """The split's images ``index`` under (perturbation, level): read from ``stored`` (a file written
    by :func:`store_perturbed`) or regenerated from the seed. Attacks (fgsm, pgd, part_pgd) run on
    the model in batches of ``batch_size`` against the ground-truth labels."""
    if stored:
        return read_perturbed(stored, ds, index, perturbation, level, dev)
    keys = torch.from_numpy(ds.keys[index].astype(np.int64)).to(dev)
    images = ds.pixels(index, dev)
    if not perturbation_needs(perturbation):
        return perturb(images, perturbation, level, seed=seed, keys=keys)
    labels = torch.from_numpy(ds.labels[index]).to(dev)
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], batch_size):
        part = slice(i, i + batch_size)
        out[part] = perturb(images[part], perturbation, level, seed=seed, keys=keys[part], model=model,
                            labels=labels[part], target_layer=target_layer, params=params)
    return out


def store_perturbed(dataset_path: str | Path, model_path: str | Path, output: str | Path, *, perturbation: str,
                    level: float, params: dict, target_layer: str, split: str, batch_size: int, seed: int,
                    device: str = "auto", config: dict | None = None, shard: tuple[int, int] | None = None) -> None:
    """Write the perturbed images of one (kind, level) as float32 HDF5 (/images, /ids) with provenance;
    ``shard`` = (start, stop) of the split only."""
    import h5py
    dev = pick_device(device)
    ds = read_shard(dataset_path, split, shard)
    model, payload = load_model(model_path, dev)
    layer = target_layer or default_target_layer(payload["architecture"])
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:
        shape = (len(ds),) + tuple(ds.images.shape[1:])
        data = f.create_dataset("images", shape=shape, dtype=np.float32, chunks=(1,) + shape[1:],
                                compression="gzip", compression_opts=4)
        f.create_dataset("ids", data=np.asarray(ds.ids, dtype=object), dtype=h5py.string_dtype())
        for start in range(0, len(ds), batch_size):
            index = slice(start, min(start + batch_size, len(ds)))
            data[index] = perturbed_pixels(ds, index, perturbation, level, seed, dev, model=model,
                                           target_layer=layer, params=params, batch_size=batch_size).cpu().numpy()
        f.attrs.update({"perturbation": perturbation, "level": float(level), "params": _json(params), "seed": seed,
                        "split": split,
                        "provenance": _json(provenance(config, [dataset_path, model_path], seed, dev))})


def read_perturbed(path: str | Path, ds, index: slice, perturbation: str, level: float, dev) -> torch.Tensor:
    import h5py
    with h5py.File(path, "r") as f:
        if f.attrs.get("perturbation") != perturbation or float(f.attrs.get("level", -1)) != float(level):
            raise ValueError(f"{path}: holds {f.attrs.get('perturbation')}~{f.attrs.get('level')}, "
                             f"expected {perturbation}~{level}")
        if not np.array_equal(f["ids"].asstr()[index], ds.ids[index]):
            raise ValueError(f"{path}: image ids do not match the dataset split")
        return torch.from_numpy(f["images"][index]).to(dev)


def compute_heatmaps(dataset_path: str | Path, model_path: str | Path, output: str | Path, job: HeatmapJob, *,
                     perturbed: str | Path | None = None, extra_inputs: list | None = None,
                     config: dict | None = None) -> None:
    """All methods for one (perturbation, level), on the split or its ``job.shard`` = (start, stop):
    one forward + backward per batch serves them all. ``job.store`` (cam.store): 'feature' keeps the
    maps at feature resolution, rebuilt on read (cambench.store). ``perturbed``: the stored perturbed
    images (else regenerated from the seed); ``extra_inputs`` (the searched SyCAM expression) and
    ``config`` are recorded in the provenance."""
    perturbation, level, seed, shard, batch_size = job.perturbation, job.level, job.seed, job.shard, job.batch_size
    dev = pick_device(job.device)
    ds = read_shard(dataset_path, job.split, shard)
    first = int(shard[0]) if shard else 0  # the shard's first row in the split
    model, payload = load_model(model_path, dev)
    layer = job.target_layer or default_target_layer(payload["architecture"])
    methods = {m: dict(p or {}) for m, p in job.methods.items()}
    skipped = sorted(m for m, p in methods.items() if not method_applies(m, p, model))
    if skipped:
        log.info("not applicable to %s (%s), skipped: %s", job.model or model_path,
                 payload["architecture"], ", ".join(skipped))
        methods = {m: p for m, p in methods.items() if m not in skipped}
    inputs = [dataset_path, model_path, *(extra_inputs or []), *([perturbed] if perturbed else [])]
    attrs = {"provenance": _json(provenance(config, inputs, seed, dev)),
             "perturbation": perturbation, "level": float(level), "seed": seed, "target_layer": layer,
             "perturbation_params": _json(job.perturbation_params),
             "class_source": job.class_source, "skipped_methods": _json(skipped), "split": job.split,
             "rows": _json([first, first + len(ds)]),
             **{key: name for key, name in (("dataset", job.dataset), ("model", job.model)) if name}}
    n = len(ds)
    with HeatmapWriter(output, ds.ids, ds.labels, methods, job.dtype, attrs, job.store) as writer, \
            _progress(n, f"heatmaps {perturbation}~{level}") as bar:
        for start in range(0, n, batch_size):
            index = slice(start, min(start + batch_size, n))
            images = perturbed_pixels(ds, index, perturbation, level, seed, dev, model=model, target_layer=layer,
                                      params=job.perturbation_params, batch_size=batch_size, stored=perturbed)
            targets = torch.from_numpy(ds.labels[index]).to(dev) if job.class_source == "gt" else None
            writer.write(start, explain_many(model, images, methods, layer, targets, memory_mb=job.memory_mb))
            bar.update(index.stop - index.start)
    # The flag counts (attributes of the file) in the job log too; a method with flags of its own
    # (Ablation-CAM: target score <= 0, which it divides by) always reports them.
    for label, counts in writer.flag_counts.items():
        own = METHODS.get(method_of(label, methods[label])[0]).meta.get("flags") is not None
        if any(counts.values()) or own:
            log.log(logging.WARNING if any(counts.values()) else logging.INFO, "%s %s~%s: %s of %d images",
                    label, perturbation, level, ", ".join(f"{k} {v}" for k, v in counts.items()), n)


# ------------------------------------------------------------------------------------------------
# SyCAM: search a CAM weight expression on a split that is not the evaluation split
# ------------------------------------------------------------------------------------------------

def search_sycam(dataset_path: str | Path, model_path: str | Path, output_expression: str | Path,
                 output_table: str | Path, *, target_layer: str, search: dict, class_source: str, seed: int,
                 device: str = "auto", memory_mb: float = 1024.0, config: dict | None = None) -> dict:
    """Run :func:`cambench.sycam.synthesise` on ``search['images']`` images of ``search['split']``
    and write the best expression (a text file usable as ``sycam: {expression: file:...}``) and
    the table of every expression scored."""
    from .sycam import synthesise, write_expression
    dev = pick_device(device)
    ds = read_dataset(dataset_path, search["split"])
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(ds), size=min(search["images"], len(ds)), replace=False))
    metric = search["metric"]
    needs = METRICS.get(metric).meta.get("needs", ())
    if "masks" in needs and ds.masks is None:
        raise ValueError(f"{dataset_path}: cam.sycam.metric '{metric}' needs ground-truth masks, "
                         f"which split '{search['split']}' of this dataset does not have")
    model, payload = load_model(model_path, dev)
    layer = target_layer or default_target_layer(payload["architecture"])
    images = ds.pixels(index, dev)
    masks = torch.from_numpy(ds.masks[index]).to(dev) if ds.masks is not None and "masks" in needs else None
    targets = torch.from_numpy(ds.labels[index]).to(dev) if class_source == "gt" else None
    params = {**(search.get("metric_params") or {}), "fill": torch.tensor(ds.mean, device=dev)}
    result = synthesise(model, images, layer, metric=metric, metric_params=params, masks=masks, targets=targets,
                        max_size=search["max_size"], terminals=search.get("terminals") or None,
                        time_budget_s=search.get("time_budget_s") or None, seed=seed, memory_mb=memory_mb)
    log.info("SyCAM: best %r, %s %.4f (%d expressions scored, %d pruned, stopped at %s, %.1fs)",
             result.best_expression, metric, result.best_score, len(result.table), len(result.pruned),
             result.stopped, result.elapsed_s)
    write_expression(output_expression, result.best_expression,
                     comment=f"SyCAM search (cambench; our reading of arXiv 2504.09998)\n"
                             f"{'maximised' if result.maximise else 'minimised'} {metric} = {result.best_score:.6f} "
                             f"on {len(index)} '{search['split']}' images\n"
                             f"provenance: {_json(provenance(config, [dataset_path, model_path], seed, dev))}")
    table = pd.DataFrame(result.table, columns=["expression", "size", metric])
    table["best"] = table["expression"] == result.best_expression
    with atomic_path(output_table) as tmp:
        table.to_csv(tmp, index=False)
    return {"expression": result.best_expression, "score": result.best_score, "scored": len(table)}


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

def metric_params(name: str, params: dict | None, score: str, inputs: set[str] | None = None) -> dict:
    """Config parameters plus the global score for metrics that read one, with defaults filled in.
    With ``inputs``, the ground truth a data set supplies ({"masks", "boxes"}), choices that depend
    on it are resolved as the metric resolves them (box_iou's gt_box "auto"), so the table records them."""
    entry = METRICS.get(name)
    full = {**entry.parameters(), **(params or {})}
    if "score" in full:
        full["score"] = score
    resolve = entry.meta.get("resolve_params")
    return resolve(full, inputs) if resolve is not None and inputs is not None else full


def compute_metrics(dataset_path: str | Path, model_path: str | Path, heatmaps_path: str | Path,
                    clean_heatmaps_path: str | Path, output: str | Path, job: MetricJob, *,
                    perturbed: str | Path | None = None, config: dict | None = None) -> pd.DataFrame:
    """Tidy table: one row per image × method × metric for this (perturbation, level).

    A metric that does not apply to an image (no mask, prediction changed, the clean level for a
    robustness metric, no channel weights for a sensitivity axiom) produces no row, never a NaN.
    Metrics that re-explain images (max-sensitivity, MPRT, axioms) use each method's parameters and
    target layer as stored in the heatmap file, in batches of ``job.batch_size``. ``perturbed``: the
    stored perturbed images (else regenerated from the seed); ``config``: for the provenance record.
    """
    metrics, perturbation, level, split, seed = job.metrics, job.perturbation, job.level, job.split, job.seed
    dev = pick_device(job.device)
    ds = read_shard(dataset_path, split, job.shard)
    supplied = {name for name, value in (("masks", ds.masks), ("boxes", ds.boxes)) if value is not None}
    try:  # before any model or perturbation work: gt_box "boxes" on a data set without boxes
        full_params = {name: metric_params(name, params, job.score, supplied) for name, params in metrics.items()}
    except ValueError as err:
        raise ValueError(f"metrics.compute ({dataset_path}, data set '{job.dataset}'): {err}") from None
    net, _ = load_model(model_path, dev)
    hm = read_heatmaps(heatmaps_path, raw=True)
    clean = read_heatmaps(clean_heatmaps_path) if perturbation != "none" else None
    for other in filter(None, [hm, clean]):
        if not np.array_equal(other.ids, ds.ids):
            raise ValueError(f"{heatmaps_path}: image ids do not match the '{split}' split of {dataset_path}")
    layer = str(hm.attrs.get("target_layer", ""))
    images = perturbed_pixels(ds, slice(None), perturbation, level, seed, dev, model=net, target_layer=layer,
                              params=job.perturbation_params, batch_size=job.batch_size, stored=perturbed)
    masks = torch.from_numpy(ds.masks).to(dev) if ds.masks is not None else None
    if "boxes" in supplied:  # box_iou's ground truth: the boxes of each image's label class, padded
        boxes, box_valid = label_class_boxes(*(torch.from_numpy(a).to(dev) for a in
                                               (ds.boxes, ds.box_image, ds.box_label, ds.labels)))
    else:
        boxes = box_valid = None
    method_specs = json_attribute(hm.attrs, "methods", heatmaps_path, dict, default={})
    targets = torch.from_numpy(hm.targets).to(dev)
    predictions = torch.from_numpy(hm.predictions).to(dev)
    clean_predictions = clean.predictions if clean is not None else hm.predictions
    shared = {"masks": masks, "boxes": boxes, "box_valid": box_valid, "fill": images.new_tensor(ds.mean),
              "memory_mb": job.memory_mb, "predictions": predictions, "target_layer": layer, "network": net,
              "keys": torch.from_numpy(ds.keys.astype(np.int64)).to(dev),
              "batch_size": job.batch_size, "cache": {}, "scores": torch.from_numpy(hm.scores).to(dev),
              # re-explaining metrics (max-sensitivity, MPRT) explain every method in one pass
              "table_methods": {m: (method_specs.get(m, {}), torch.from_numpy(maps)) for m, maps in hm.maps.items()}}
    if clean is not None:
        shared["reference_predictions"] = torch.from_numpy(clean.predictions).to(dev)
    frames = []
    # The bar counts forward-equivalents per image, not steps: a table's shared work (max-sensitivity
    # re-explains every method) falls on the first method's steps, which equal steps would ignore.
    steps = metric_progress_steps(net, images[:1], layer, method_specs, list(hm.maps), full_params,
                                  perturbed=clean is not None, masks=masks is not None)
    with _progress(sum(steps.values()), f"metrics {perturbation}~{level}", unit="FE") as bar:
        for method, maps in hm.maps.items():
            heat = torch.from_numpy(maps).to(dev)
            extra = dict(shared, method=method, method_params=method_specs.get(method, {}),
                         raw=torch.from_numpy(hm.raw[method]).to(dev),
                         weights=torch.from_numpy(hm.weights[method]).to(dev) if method in hm.weights else None)
            if clean is not None:
                extra["reference"] = torch.from_numpy(clean.maps[method]).to(dev)
            for name, params in metrics.items():
                entry = METRICS.get(name)
                needs = set(entry.meta.get("needs", ()))
                if ("masks" in needs and masks is None) or ("reference" in needs and clean is None):
                    bar.update(steps[method, name])
                    continue  # absent by design: this metric cannot apply here
                full = full_params[name]
                values, applies = evaluate_applies(net, images, heat, name, targets=targets, **extra, **full)
                keep = applies.cpu().numpy()
                vals = values.cpu().numpy()[keep]
                if not np.isfinite(vals).all():
                    raise FloatingPointError(f"metric '{name}' produced non-finite values for method '{method}'")
                frames.append(pd.DataFrame({
                    "dataset": job.dataset, "model": job.model, "method": method, "perturbation": perturbation,
                    "level": float(level), "image_id": ds.ids[keep], "label": ds.labels[keep],
                    "target": hm.targets[keep], "prediction": hm.predictions[keep],
                    # 1 = the label is the top-1 prediction; missing (NA) for heatmap files without it
                    "label_rank": pd.array(hm.label_rank[keep] if hm.label_rank is not None
                                           else [pd.NA] * int(keep.sum()), dtype="Int64"),
                    "clean_prediction": clean_predictions[keep], "metric": name,
                    "value": vals.astype(np.float64), "score": full.get("score", entry.meta.get("score", "")),
                    "params": _json({k: v for k, v in full.items() if k != "score"}),
                    # engine.FLAG_* bits of the map scored (1 constant, 2 had NaN/Inf): degenerate maps stay visible
                    "map_flags": hm.flags[method][keep].astype(np.uint8),
                }))
                bar.update(steps[method, name])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    inputs = [dataset_path, model_path, heatmaps_path, clean_heatmaps_path, *([perturbed] if perturbed else [])]
    table.attrs["provenance"] = _json(provenance(config, list(dict.fromkeys(inputs)), seed, dev))
    with atomic_path(output) as tmp:
        table.to_parquet(tmp, index=False)
    return table


def join_metric_tables(shards: list[str | Path], output: str | Path, metric_order: list[str]) -> pd.DataFrame:
    """One (dataset, model, perturbation, level) partition of the metric table (``cambench.tables``) from its
    shards' tables (in split order): rows ordered metric (in ``metric_order``, the config's), method (sorted,
    as the heatmap file lists them), then image in split order; one row group per metric."""
    tables = [pd.read_parquet(p) for p in shards]
    table = pd.concat(tables, ignore_index=True)
    record = json.loads(tables[0].attrs.get("provenance", "{}"))
    record["shards"] = [str(p) for p in shards]
    table.attrs["provenance"] = _json(record)
    return write_partition(table, output, metric_order)


def models_table(train_jsons: dict[str, str], output: str | Path) -> pd.DataFrame:
    rows = []
    for name, path in train_jsons.items():
        info = json.loads(Path(path).read_text())
        rows.append({"model": name, "architecture": info["architecture"], "train_accuracy": info["train_accuracy"],
                     "test_accuracy": info["test_accuracy"], "test_top5_accuracy": info.get("test_top5_accuracy"),
                     "chance": info["chance"], "n_train": info["n_train"],
                     "n_test": info["n_test"], "epochs": info.get("epochs", len(info["history"])),
                     "weights": info.get("weights", ""),
                     "train_seconds": round(info["train_seconds"], 1)})
    table = pd.DataFrame(rows)
    with atomic_path(output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table


def metacam_ensembles(dataset_path, model_path, output, *, components: list[str], component_params: dict,
                      k: float | str, consensus: str, metric_params: dict, split: str, dataset: str, model: str,
                      target_layer: str, images: int, batch_size: int, memory_mb: float, seed: int,
                      device: str = "auto", k_grid: list[float] | None = None) -> pd.DataFrame:
    """ROAD (combined) of the MetaCAM map of every subset of ``components`` on the first ``images``
    images of ``split``, and each component's Cumulative Residual Effect (docs/methods.md §2.11); ``k``
    'adaptive' chooses each image's k from ``k_grid`` (the method's grid when None)."""
    if len(components) < 2:
        raise ValueError(f"papers.metacam.components: needs >= 2 components, got {components}")
    torch.manual_seed(seed)
    dev = pick_device(device)
    ds = read_dataset(dataset_path, split)
    net, payload = load_model(model_path, dev)
    target_layer = target_layer or default_target_layer(payload["architecture"])
    x = torch.from_numpy(ds.images[:images]).to(dev).float()
    scores = ensemble_sweep(net, x, target_layer, components, None, component_params, consensus, k,
                            "road_combined", metric_params, batch_size, memory_mb,
                            **({} if k_grid is None else {"k_grid": k_grid}))
    cre = cumulative_residual_effect(scores, components)
    rows = [{"dataset": dataset, "model": model, "kind": "subset", "subset": "+".join(sorted(s)), "size": len(s),
             "value": v} for s, v in sorted(scores.items(), key=lambda kv: (len(kv[0]), sorted(kv[0])))]
    rows += [{"dataset": dataset, "model": model, "kind": "cre", "subset": m, "size": np.nan, "value": v}
             for m, v in cre.items()]
    out = pd.DataFrame(rows)
    with atomic_path(output) as tmp:
        out.to_csv(tmp, index=False, float_format="%.6g")
    return out
