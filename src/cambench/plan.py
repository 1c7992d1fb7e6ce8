"""What a config will cost before any job runs: images, model passes, device time and disk.

``snakemake plan`` and ``python -m cambench.plan [--configfile X]`` print :func:`format_plan` of
:func:`make_plan`. Everything comes from the validated config (schema defaults filled in):

* images of the evaluation split per data set: a stand-in's counts (read the way its format reads
  them: per class and split, or per class with the splits assigned by ``options.test_fraction``, as
  ``data.formats.assign_splits`` rounds), a prepared ``results/<d>/dataset.h5`` where it exists, the
  files of an image-folder or ImageNet root, or an explicit ``images`` override; else unknown;
* the item shape (a one-item-per-class stand-in is generated and prepared in a temporary folder,
  then ``resize`` / ``crop`` applied) and the target layer's feature shape and channel count K (the
  architecture built with random weights on the meta device: no weights file, no memory);
* model work per image, declared where each method and metric is registered, times the levels of
  the sweep (attacks regenerate their steps in both jobs of a level) and the training epochs. A
  registration's ``cost`` is a dict, or ``cost(params, layer)`` of the parameters (defaults filled
  in) and ``layer = {"channels": K, "classes": C}``: ``forward`` (full forwards per image),
  ``backward``, ``head`` (replays of the part after the target layer); a method may add ``members``
  ((name, params) computed once per batch, MetaCAM's components); a metric may return a list of
  such parts, each with ``explain`` (engine passes of every method of the table), ``once`` (a key:
  computed once per method, or once per job with ``per: "table"``). Metrics that do not read the
  model do no model work. Per-batch extras (Score-CAM's baseline, Ablation-CAM's zero-image
  forwards) are left out, and Score-CAM's K forwards are the upper bound (constant channels share one);
* seconds: one forward and one backward per image, timed on this machine (the config's device,
  random weights, the heatmap rule's torch threads), times the work. An estimate: data loading,
  HDF5 writing, sorting, SSIM and ROAD's solves are not counted;
* disk: maps and channel weights (``cambench.store.map_bytes``), metric rows x bytes per row, the
  data sets and checkpoints. Metrics that apply to some images only are counted for every image.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .config import is_standin, perturbation_sweep, validate_config
from .engine import METHODS, method_applies, method_of, resolve_layer
from .metrics import METRICS
from .models import build_model, default_target_layer
from .perturbations import perturbation_needs, perturbation_params
from .store import map_bytes

WORK_KEYS = ("forward", "backward", "head")
BACKWARD_FORWARDS = 2.0      # FLOPs of a backward pass in forward passes (the usual 2x rule)
# Bytes per tidy metric row, measured on the default config's clean metric job for shapes_cnn (30,379
# rows of 14 methods x 32 metrics, 2026-12-07: 5.7 in its parquet, 164 in CSV; tests/test_plan.py
# re-measures the parquet figure). Each row is in two parquet files (the shard's and its partition of
# results/metrics/) and, where written (metrics.csv), in results/metrics.csv.
METRIC_ROW_BYTES = 6.0
METRIC_CSV_ROW_BYTES = 165.0
METRIC_PARQUET_COPIES = 2
CPU_CALIBRATION_BATCH = 8    # images per timed pass on a CPU at most (time per image barely depends on it)
CPU_CALL_SECONDS = 0.25      # and fewer where one pass would take longer
CALIBRATION_REPEATS = 2      # timed calls at least (more while they take under CALIBRATION_SECONDS)
CALIBRATION_SECONDS = 1.0
DEFAULT_THREADS = 2          # torch threads of a heatmap job (rules/heatmaps.smk)
WARN_SECONDS = 3600.0
WARN_BYTES = 100e9
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PlanError(ValueError):
    """A config the plan cannot be made for (the message names the key)."""


# ------------------------------------------------------------------------------------------------
# Model work
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """Model passes per image: full forwards, backwards (counted as full ones) and replays of the
    part of the model after the target layer (``head``)."""
    forward: float = 0.0
    backward: float = 0.0
    head: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(*(getattr(self, k) + getattr(other, k) for k in WORK_KEYS))

    def __mul__(self, factor: float) -> Work:
        return Work(*(getattr(self, k) * factor for k in WORK_KEYS))

    __rmul__ = __mul__

    def equivalents(self, head_fraction: float) -> float:
        """Forward-equivalents by FLOPs (docs/cluster.md §3): a backward is two forwards, a
        head replay its share of a forward's FLOPs."""
        return self.forward + BACKWARD_FORWARDS * self.backward + head_fraction * self.head

    def seconds(self, cal: Calibration) -> float:
        return self.forward * cal.forward_s + self.backward * cal.backward_s + self.head * cal.head_s


def _parts(declared) -> list[dict]:
    return [dict(p) for p in declared] if isinstance(declared, (list, tuple)) else [dict(declared)]


def _work(part: dict) -> Work:
    return Work(*(float(part.get(k, 0)) for k in WORK_KEYS))


def _declared_cost(entry, params: dict, layer: dict):
    declared = entry.meta.get("cost")
    if declared is None:
        raise PlanError(f"{entry.kind} '{entry.name}' declares no cost at its registration (cost=...)")
    full = {**entry.parameters(), **params}
    return declared(full, layer) if callable(declared) else declared


def _method_own_work(declared: dict, layer: dict) -> Work:
    """The work a method's declaration states, plus the metric calls it declares as
    ``metric_calls: [(metric, params, calls per image)]`` (MetaCAM's adaptive k scores every k of its
    grid), each counted by the metric's own declaration."""
    work = _work(declared)
    for metric, metric_params, calls in declared.get("metric_calls", ()):
        work += calls * metric_work(metric, metric_params, layer)
    return work


def method_work(name: str, params: dict, layer: dict) -> Work:
    """A method's own model work per image beyond the forward (+ backward) the engine shares between
    all methods of a batch, with its members (MetaCAM's components) included. ``layer``:
    ``{"channels": K, "classes": C}`` of the target layer and model."""
    declared = _declared_cost(METHODS.get(name), params, layer)
    work = _method_own_work(declared, layer)
    for member, member_params in declared.get("members", ()):
        work += method_work(member, member_params, layer)
    return work


def _method_key(name: str, params: dict) -> str:
    """The engine's cache key of a method's map in a batch (engine._Session.method_map)."""
    return name + repr(sorted({**METHODS.get(name).parameters(), **params}.items()))


def heatmap_work(methods: dict[str, dict], layer: dict) -> tuple[Work, dict[str, Work]]:
    """(the shared forward + backward, label -> the method's own work) per image of one engine pass
    over ``methods``: a member of another method (MetaCAM's) that the table runs anyway, with the same
    parameters, is computed once per batch and counted once, where it first appears."""
    own: dict[str, Work] = {}
    seen: set[str] = set()
    gradients = False
    for label, params in methods.items():
        name, params = method_of(label, params)
        gradients |= bool(METHODS.get(name).declared("needs_gradients", params, True))
        seen.add(_method_key(name, params))
    pending = []
    for label, params in methods.items():
        name, params = method_of(label, params)
        declared = _declared_cost(METHODS.get(name), params, layer)
        own[label] = _method_own_work(declared, layer)
        pending.append((label, list(declared.get("members", ()))))
    for label, members in pending:  # members the table does not run itself, once each
        while members:
            name, params = members.pop(0)
            key = _method_key(name, params)
            if key in seen:
                continue
            seen.add(key)
            declared = _declared_cost(METHODS.get(name), params, layer)
            own[label] += _method_own_work(declared, layer)
            members += list(declared.get("members", ()))
    return Work(forward=1, backward=int(gradients)), own


def metric_work(name: str, params: dict, layer: dict) -> Work:
    """A metric's model work per image, every part counted (what one call costs alone; MetaCAM's
    adaptive k calls its metric once per k of the grid)."""
    entry = METRICS.get(name)
    if "model" not in entry.meta.get("needs", ()):
        return Work()
    return sum((_work(p) for p in _parts(_declared_cost(entry, params, layer))), Work())


def metric_steps(metrics: dict[str, dict], methods: list[str], explain: Work, layer: dict, *,
                 perturbed: bool, masks: bool) -> dict[tuple[str, str], Work]:
    """(method, metric) -> model work per image of that step of a metric job, in the job's order
    (methods, then metrics). ``explain``: one engine pass of every method (what max-sensitivity and
    MPRT repeat). A part declared ``once`` is paid by the first step that needs it, per method, or
    (``per: table``) once for the job: the job's cache computes it there for all of them."""
    seen: set = set()
    out = {}
    for method in methods:
        for name, params in metrics.items():
            entry = METRICS.get(name)
            needs = set(entry.meta.get("needs", ()))
            work = Work()
            applies = not ("reference" in needs and not perturbed) and not ("masks" in needs and not masks)
            if applies and "model" in needs:  # a metric that does not read the model does no model work
                for part in _parts(_declared_cost(entry, params, layer)):
                    per_table = part.get("per") == "table"
                    once = part.get("once")
                    if once is not None:
                        key = (once,) if per_table else (once, method)
                        if key in seen:
                            continue
                        seen.add(key)
                    work += _work(part) + explain * float(part.get("explain", 0))
            out[method, name] = work
    return out


def metric_job_work(metrics: dict[str, dict], methods: list[str], explain: Work, layer: dict, *,
                    perturbed: bool, masks: bool) -> dict[str, Work]:
    """metric -> model work per image of one metric job over ``methods`` (see :func:`metric_steps`)."""
    out = {name: Work() for name in metrics}
    for (_, name), work in metric_steps(metrics, methods, explain, layer, perturbed=perturbed,
                                        masks=masks).items():
        out[name] += work
    return out


def model_layer(net: torch.nn.Module, target_layer: str, image: torch.Tensor) -> dict:
    """``{"channels": K, "classes": C}`` of a model's target layer, from one forward of ``image`` (1, ...)."""
    shapes = []
    handle = resolve_layer(net, target_layer).register_forward_hook(lambda m, i, out: shapes.append(out.shape))
    try:
        with torch.no_grad():
            logits = net(image[:1])
    finally:
        handle.remove()
    return {"channels": int(shapes[0][1]), "classes": int(logits.shape[1])}


def metric_progress_steps(net: torch.nn.Module, image: torch.Tensor, target_layer: str, method_specs: dict,
                          methods: list[str], metrics: dict[str, dict], *, perturbed: bool,
                          masks: bool) -> dict[tuple[str, str], float]:
    """Weights of a metric job's progress bar: (method, metric) -> forward-equivalents per image of
    that step (:func:`metric_steps`), plus one for the work no model pass counts. Where the work
    cannot be told (a method without a declared cost), every step weighs one."""
    try:
        layer = model_layer(net, target_layer, image)
        capture, own = heatmap_work({m: method_specs.get(m, {}) for m in methods}, layer)
        explain = capture + sum(own.values(), Work())
        steps = metric_steps(metrics, methods, explain, layer, perturbed=perturbed, masks=masks)
        return {key: work.equivalents(0.0) + 1.0 for key, work in steps.items()}
    except (ValueError, KeyError, TypeError, OSError):  # the weights are a display aid: never fail a job on them
        return {(m, name): 1.0 for m in methods for name in metrics}


def perturbation_work(kind: str, params: dict) -> Work:
    """Model work per image of making a perturbed image: attacks take one forward + backward per
    step (FGSM one), PART's CAM one more; the noise kinds none."""
    needs = perturbation_needs(kind)
    if "model" not in needs:
        return Work()
    steps = {**perturbation_params(kind), **params}.get("steps", 1) + ("target_layer" in needs)
    return Work(forward=steps, backward=steps)


# ------------------------------------------------------------------------------------------------
# Data: images, item shape, classes
# ------------------------------------------------------------------------------------------------

@dataclass
class DataInfo:
    images: int | None            # items of the evaluation split (cam.split)
    train: int | None             # items of the train split (training and the SyCAM search)
    shape: tuple[int, ...] | None  # (C, *spatial) of a prepared item
    classes: int | None
    masks: bool
    source: str                   # how the numbers were found, or what to do when they are not


def _split_counts(fmt_entry, ds: dict, counts: dict, classes: int, items_per_unit: float, split: str):
    """Items of ``split`` of a stand-in: per class and split for native splits; per class in total
    for assigned ones, split as ``assign_splits`` does (round(test_fraction x groups), at least one
    group each side)."""
    if fmt_entry.meta["splits"] == "native":
        return int(counts.get(split, 0)) * classes
    fraction = {**fmt_entry.parameters(), **(ds.get("options") or {})}["test_fraction"]
    groups = sum(int(v) for v in counts.values())
    test = min(max(int(round(fraction * groups)), 1), groups - 1) if groups >= 2 else 0
    per_class = test if split == "test" else groups - test
    return int(round(per_class * classes * items_per_unit))


def _prepared_info(path: Path, split: str, note: str) -> DataInfo:
    import h5py

    from .data import split_size
    from .utils import json_attribute
    with h5py.File(path, "r") as f:
        shape = tuple(int(s) for s in f["images"].shape[1:])
        classes = len(json_attribute(f.attrs, "class_names", path, list))
        masks = "masks" in f
        splits = set(np.asarray(f["split"].asstr()[:]).tolist())
    return DataInfo(split_size(path, split), split_size(path, "train") if "train" in splits else 0, shape,
                    classes, masks, note)


def _standin_info(ds: dict, split: str, seed: int) -> DataInfo:
    """The counts of a stand-in, and its item shape and classes from a one-per-class copy prepared
    as the workflow prepares it (resize and crop included)."""
    from .data import FORMATS, prepare, standin_format, standin_writes_masks, write_standin
    spec = copy.deepcopy(ds["standin"])
    kind, counts = spec["kind"], dict(spec["counts"])
    fmt = standin_format(kind)
    spec["counts"] = {k: 1 for k in counts}
    with tempfile.TemporaryDirectory(prefix="cambench-plan-") as tmp:
        out = Path(tmp) / "standin"
        write_standin(out, spec, seed)
        prepare(fmt, out / "data", Path(tmp) / "dataset.h5",
                mask_root=out / "masks" if standin_writes_masks(kind) else None, options=ds.get("options"),
                seed=seed, channels=ds.get("channels", 3), resize=ds.get("resize", 0), crop=ds.get("crop", 0))
        small = _prepared_info(Path(tmp) / "dataset.h5", split, "")
    entry = FORMATS.get(fmt)
    per_class = kind != "brats"  # BraTS counts cases (of either class), each giving many slices
    units = sum(spec["counts"].values()) * (small.classes if per_class else 1)
    items_per_unit = (small.images + small.train) / units if not per_class else 1.0
    classes = small.classes if per_class else 1
    how = (f"stand-in counts {counts} x {small.classes} classes" if per_class else
           f"stand-in ≈ {counts} cases x {items_per_unit:g} items per case (from a one-case stand-in)")
    if entry.meta["splits"] == "assigned":
        how += f", splits assigned (test_fraction {_test_fraction(entry, ds)})"
    return DataInfo(_split_counts(entry, ds, counts, classes, items_per_unit, split),
                    _split_counts(entry, ds, counts, classes, items_per_unit, "train"),
                    small.shape, small.classes, small.masks, how)


def _test_fraction(entry, ds: dict) -> float:
    return {**entry.parameters(), **(ds.get("options") or {})}["test_fraction"]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _first_image_shape(files: list[Path], channels: int) -> tuple[int, ...] | None:
    from PIL import Image
    if not files:
        return None
    with Image.open(files[0]) as im:  # reads the header only
        width, height = im.size
    return (channels, height, width)


def _class_count(ds: dict, workdir: Path) -> int | None:
    from .data import read_class_mapping
    classes = ds.get("classes") or []
    return len(read_class_mapping(classes if isinstance(classes, list) else workdir / classes)) or None


def _real_info(name: str, ds: dict, split: str, workdir: Path) -> DataInfo:
    fmt = ds.get("format", "imagefolder")
    root = workdir / ds.get("root", "")
    channels = ds.get("channels", 3)
    hint = (f"unknown: prepare it first (snakemake results/{name}/dataset.h5) or give the count "
            f"(--images {name}=N)")
    if fmt == "imagefolder":
        test, train = _image_files(root / split), _image_files(root / "train")
        classes = _class_count(ds, workdir) or len([p for p in (root / split).iterdir() if p.is_dir()])
        return DataInfo(len(test), len(train), _first_image_shape(test or train, channels), classes,
                        bool(ds.get("mask_root")), f"image files in {ds['root']}/{split}/*/")
    if fmt == "imagenet":
        files = _image_files(root)
        return DataInfo(len(files), 0, _first_image_shape(files, channels), _class_count(ds, workdir) or 1000,
                        True, f"image files under {ds['root']}")  # ILSVRC boxes give masks
    return DataInfo(None, None, None, _class_count(ds, workdir), bool(ds.get("mask_root")), hint)


def _resized(shape: tuple[int, ...] | None, ds: dict) -> tuple[int, ...] | None:
    """The item shape after ``resize`` (shorter side) and ``crop`` (centre, square), 2D only."""
    if shape is None or len(shape) != 3:
        return shape
    from .data.preprocess import geometry
    c, h, w = shape
    return (c, *geometry(h, w, ds.get("resize", 0), ds.get("crop", 0)).size)


def dataset_info(name: str, ds: dict, split: str, seed: int, workdir: Path,
                 images: int | None = None) -> DataInfo:
    """Images of ``split`` and the item shape of data set ``name`` (``images`` overrides the count)."""
    prepared = workdir / "results" / name / "dataset.h5"
    if prepared.is_file():
        info = _prepared_info(prepared, split, f"prepared {prepared.relative_to(workdir)}")
    elif is_standin(ds):
        info = _standin_info(ds, split, seed)
    else:
        info = _real_info(name, ds, split, workdir)
        info.shape = _resized(info.shape, ds)
    if images is not None:
        info.images, info.source = int(images), f"given: {images} images"
    return info


# ------------------------------------------------------------------------------------------------
# Model: feature shape, head share, calibration
# ------------------------------------------------------------------------------------------------

class _FlopCount(TorchDispatchMode):
    """FLOPs of every op torch has a formula for (convolutions, matrix products)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _build(spec: dict, info: DataInfo) -> torch.nn.Module:
    """The model as train_model builds it (random weights; the normalisation's statistics do not
    change its cost)."""
    params = {"n_classes": info.classes or 2, "in_channels": info.shape[0], **(spec.get("params") or {})}
    return build_model(spec["architecture"], **params).eval()


@dataclass
class LayerProfile:
    feature_shape: tuple[int, ...]        # the target layer's output (K, *s)
    head_fraction: float                  # FLOP share of the part of the model after it
    parameters: int
    net: torch.nn.Module                  # the random-weight model (on the meta device where it runs there)
    shapes: dict[int, tuple[int, ...]]    # id(module) -> its output shape (C, *s), first call

    def spatial(self, net_layer: str) -> tuple[int, ...]:
        return self.shapes[id(resolve_layer(self.net, net_layer))][1:]


def layer_profile(spec: dict, info: DataInfo) -> LayerProfile:
    """The target layer's shape, the head's FLOP share and every module's output shape, from one
    forward of a random-weight model on the meta device (on the CPU, one image, where the meta
    device cannot run it)."""
    for device in ("meta", "cpu"):
        with torch.device(device):
            net = _build(spec, info)
        shapes, flops_at = {}, {}
        counter = _FlopCount()

        def hook(module, _inputs, output):
            if isinstance(output, torch.Tensor) and id(module) not in shapes:
                shapes[id(module)] = tuple(output.shape[1:])
                flops_at[id(module)] = counter.flops

        handle = torch.nn.modules.module.register_module_forward_hook(hook)
        try:
            with torch.no_grad(), counter:
                net(torch.zeros((1, *info.shape), device=device))
        except Exception:  # noqa: BLE001 -- data-dependent code cannot run on meta tensors: use the CPU
            if device == "cpu":
                raise
            continue
        finally:
            handle.remove()
        layer = id(resolve_layer(net, spec["target_layer"]))
        total = max(counter.flops, 1)
        return LayerProfile(shapes[layer], (total - flops_at[layer]) / total,
                            sum(p.numel() for p in net.parameters()), net, shapes)
    raise AssertionError("unreachable")


@dataclass
class Calibration:
    device: str
    threads: int
    batch: int
    repeats: int
    forward_s: float    # seconds per image of a forward (the no-grad inference copy)
    backward_s: float   # seconds per image of a backward to the input
    head_s: float       # seconds per image of a replay after the target layer (the forward x its FLOP share)

    def describe(self) -> str:
        return (f"timed on {self.device}, {self.threads} torch thread(s), batches of {self.batch}, the fastest of "
                f"{self.repeats}+ calls, random weights")


def calibrate(spec: dict, info: DataInfo, device: str, batch_size: int, head_fraction: float,
              threads: int = DEFAULT_THREADS) -> Calibration:
    """Seconds per image of one forward and one backward of the model at the item size, on
    ``device`` (this machine's CPU where it names a GPU this machine does not have; the text says so)."""
    from .inference import inference_copy
    from .utils import pick_device
    dev = pick_device("auto" if device.startswith("cuda") and not torch.cuda.is_available() else device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = _build(spec, info).to(dev)
        batch = batch_size
        if dev.type == "cpu":  # a CPU's time per image barely depends on the batch: keep each call short
            with torch.no_grad():
                start = time.perf_counter()
                net(torch.rand((1, *info.shape)))
                one = time.perf_counter() - start
            batch = max(1, min(batch_size, CPU_CALIBRATION_BATCH, int(CPU_CALL_SECONDS / max(one, 1e-6))))
        images = torch.rand((batch, *info.shape), device=dev)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def timed(fn) -> float:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        def best(call) -> float:
            """The fastest of a few calls per image (``call()`` returns its seconds): other load on the
            machine only ever slows a call down."""
            call()  # warm-up: allocations, the inference copy, cuDNN's choice
            times = []
            while len(times) < CALIBRATION_REPEATS or (sum(times) < CALIBRATION_SECONDS and len(times) < 10):
                times.append(call())
            return min(times) / batch

        def forward() -> float:
            with torch.no_grad():
                fast = inference_copy(net, images)[0]
                return timed(lambda: fast(images))

        def backward() -> float:  # the backward alone, timed apart from the forward it follows
            x = images.clone().requires_grad_(True)
            total = net(x).logsumexp(dim=1).sum()
            return timed(lambda: torch.autograd.grad(total, x))

        # Score-CAM's and the metrics' forwards run on the inference copy.
        forward_s, backward_s = best(forward), best(backward)
    finally:
        torch.set_num_threads(before)
    return Calibration(str(dev), threads, batch, CALIBRATION_REPEATS, forward_s, backward_s, forward_s * head_fraction)


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------

@dataclass
class ModelPlan:
    dataset: str
    model: str
    architecture: str
    target_layer: str
    data: DataInfo
    feature_shape: tuple[int, ...] | None = None
    head_fraction: float = 0.0
    parameters: int = 0
    levels: list[tuple[str, float]] = field(default_factory=list)
    capture: Work = Work()
    methods: dict[str, Work] = field(default_factory=dict)      # own work per image (one level)
    skipped: list[str] = field(default_factory=list)            # methods that do not apply to the model
    metrics_clean: dict[str, Work] = field(default_factory=dict)
    metrics_perturbed: dict[str, Work] = field(default_factory=dict)
    stages: dict[str, Work] = field(default_factory=dict)       # stage -> work of the whole run
    maps: int = 0
    metric_rows: int = 0
    disk: dict[str, float] = field(default_factory=dict)        # what -> bytes
    calibration: Calibration | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> Work:
        return sum(self.stages.values(), Work())

    def seconds(self, work: Work) -> float | None:
        return None if self.calibration is None else work.seconds(self.calibration)


@dataclass
class Plan:
    models: list[ModelPlan]
    datasets: dict[str, DataInfo]
    disk: dict[str, float]          # what -> bytes over the whole run
    device: str                     # the config's device

    def seconds(self) -> float | None:
        times = [m.seconds(m.total) for m in self.models if m.data.images is not None]
        return None if any(t is None for t in times) else sum(times)

    def total(self, attr: str) -> int:
        return sum(getattr(m, attr) for m in self.models)


def _raw_spatial(name: str, params: dict, profile: LayerProfile, spec: dict, input_spatial: tuple) -> tuple:
    """Spatial shape of a method's signed map (/raw): the target layer's, the input's for maps built
    there, or the finest of the layers a fused map reads (registration's ``raw_resolution``)."""
    where = METHODS.get(name).declared("raw_resolution", params, None)
    if where == "input":
        return input_spatial
    return max((profile.spatial(layer) for layer in [spec["target_layer"], *(where or [])]), key=math.prod)


def _levels(config: dict) -> list[tuple[str, float, dict]]:
    return [("none", 0.0, {})] + [(kind, level, params) for kind, levels, params in perturbation_sweep(config)
                                  for level in levels]


def _model_methods(config: dict, spec: dict) -> dict[str, dict]:
    chosen = spec.get("methods") or list(config["cam"]["methods"])
    methods = {}
    for label in chosen:
        params = dict(config["cam"]["methods"][label] or {})
        name, _ = method_of(label, params)
        if name == "sycam" and params.get("expression") == "search":  # any terminal the search may use
            params["expression"] = " + ".join(config["cam"]["sycam"].get("terminals") or ["gradcam"])
        methods[label] = params
    return methods


def plan_model(config: dict, name: str, spec: dict, info: DataInfo, calibration: bool | Calibration,
               threads: int = DEFAULT_THREADS) -> ModelPlan:
    """Work, time and disk of one model (its heatmap and metric jobs, training, SyCAM search)."""
    spec = {**spec, "target_layer": spec.get("target_layer") or default_target_layer(spec["architecture"])}
    plan = ModelPlan(spec["dataset"], name, spec["architecture"], spec["target_layer"], info)
    if info.shape is None:
        plan.notes.append(f"item shape unknown ({info.source}): no cost")
        return plan
    profile = layer_profile(spec, info)
    plan.feature_shape, plan.head_fraction = profile.feature_shape, profile.head_fraction
    plan.parameters = profile.parameters
    layer = {"channels": plan.feature_shape[0], "classes": info.classes or 2}
    methods = _model_methods(config, spec)
    plan.skipped = [m for m, p in methods.items() if not method_applies(m, p, profile.net)]
    methods = {m: p for m, p in methods.items() if m not in plan.skipped}
    plan.capture, plan.methods = heatmap_work(methods, layer)
    explain = plan.capture + sum(plan.methods.values(), Work())
    cam, met = config["cam"], config["metrics"]
    compute = {}
    for metric, params in met["compute"].items():
        compute[metric] = {**METRICS.get(metric).parameters(), **(params or {})}
        if "score" in compute[metric]:  # the metric job sets the config's score (pipeline.metric_params)
            compute[metric]["score"] = met["score"]
    for perturbed, target in ((False, plan.metrics_clean), (True, plan.metrics_perturbed)):
        target.update(metric_job_work(compute, list(methods), explain, layer, perturbed=perturbed, masks=info.masks))
    plan.levels = [(kind, level) for kind, level, _ in _levels(config)]
    if calibration is True:
        plan.calibration = calibrate(spec, info, config["device"], cam["batch_size"], plan.head_fraction, threads)
    elif isinstance(calibration, Calibration):
        plan.calibration = calibration

    n = info.images or 0
    stages = defaultdict(Work)
    stored = bool(config.get("store_perturbed"))
    for kind, _, params in _levels(config):
        attack = perturbation_work(kind, params)
        perturbed = kind != "none"
        stages["heatmaps"] += (explain + (Work() if stored else attack)) * n
        metrics = plan.metrics_perturbed if perturbed else plan.metrics_clean
        stages["metrics"] += (sum(metrics.values(), Work()) + (Work() if stored else attack)) * n
        if stored and perturbed:
            stages["store_perturbed"] += attack * n
    train = spec.get("train") or {}
    if train.get("epochs") and info.train is not None:
        epochs = train["epochs"] + (train.get("aggregator_epochs") or 0)
        stages["training"] = Work(1, 1) * (epochs * info.train) + Work(forward=info.train + n)  # + accuracy
    searched = [m for m in methods if method_of(m, methods[m])[0] == "sycam"
                and (config["cam"]["methods"][m] or {}).get("expression") == "search"]
    if searched:
        search = cam["sycam"]
        images = min(search["images"], info.train or search["images"])
        terminals = search.get("terminals") or ["gradcam"]
        _, own = heatmap_work({"sycam": {"expression": " + ".join(terminals)}}, layer)
        stages["sycam_search"] = (Work(1, 1) + own["sycam"]) * images
        if metric_work(search["metric"], search.get("metric_params") or {}, layer) != Work():
            plan.notes.append(f"SyCAM search: + {search['metric']} per expression scored (not counted)")
    plan.stages = dict(stages)

    # rows and disk
    weighted = [m for m, p in methods.items()
                if METHODS.get(method_of(m, p)[0]).declared("channel_weights", method_of(m, p)[1], False)]
    levels = len(plan.levels)
    plan.maps = n * len(methods) * levels
    rows = 0
    for perturbed, count in ((False, 1), (True, levels - 1)):
        for metric in compute:
            needs = set(METRICS.get(metric).meta.get("needs", ()))
            if ("masks" in needs and not info.masks) or ("reference" in needs and not perturbed):
                continue
            applies = weighted if METRICS.get(metric).meta.get("channel_weights") else methods
            rows += count * n * len(applies)
    plan.metric_rows = rows
    spatial, channels = tuple(info.shape[1:]), layer["channels"]
    per_image = sum(map_bytes(spatial, _raw_spatial(*method_of(m, p), profile, spec, spatial), cam["dtype"],
                              cam.get("store", "feature"), channels if m in weighted else 0)
                    for m, p in methods.items())
    plan.disk = {
        "heatmaps": n * levels * per_image,
        "metrics (parquet)": rows * METRIC_ROW_BYTES * METRIC_PARQUET_COPIES,
        "metrics.csv (if written)": rows * METRIC_CSV_ROW_BYTES,
        "models": plan.parameters * 4,
    }
    if stored:
        plan.disk["perturbed images"] = n * (levels - 1) * math.prod(info.shape) * 4
    return plan


def _used_datasets(config: dict, workdir: Path, given: dict | None = None) -> dict[str, DataInfo]:
    """The evaluation split of every data set a model uses (``given``: image counts that override)."""
    used = dict.fromkeys(spec["dataset"] for spec in config["models"].values())
    return {d: dataset_info(d, config["datasets"][d], config["cam"]["split"], config["seed"], workdir,
                            (given or {}).get(d)) for d in used}


def make_plan(config: dict, workdir: str | Path = ".", calibrate: bool | Calibration = True,
              images: int | dict | None = None, threads: int = DEFAULT_THREADS) -> Plan:
    """The cost plan of a validated config (schema defaults filled in; see :func:`load_config`).

    ``calibrate``: time the models here (True), use these numbers for every model (a
    :class:`Calibration`), or give no seconds (False); ``threads``: torch threads when timing.
    ``images``: the evaluation images of every data set (an int) or of some (``{dataset: n}``),
    where the config cannot tell them.
    """
    workdir = Path(workdir)
    if isinstance(images, dict):
        given = dict(images)
    else:
        given = {} if images is None else {d: images for d in config["datasets"]}
    unknown = sorted(set(given) - set(config["datasets"]))
    if unknown:
        raise PlanError(f"images given for {unknown}, which are not data sets of the config "
                        f"({', '.join(config['datasets'])})")
    datasets = _used_datasets(config, workdir, given)
    models = [plan_model(config, name, spec, datasets[spec["dataset"]], calibrate, threads)
              for name, spec in config["models"].items()]
    disk = defaultdict(float)
    for m in models:
        for what, size in m.disk.items():
            disk[what] += size
    for d, info in datasets.items():
        if info.shape is not None and info.images is not None:
            items = info.images + (info.train or 0)
            disk["datasets"] += items * math.prod(info.shape) * (1 + info.masks / info.shape[0])
    return Plan(models, datasets, dict(disk), config["device"])


def metric_row_bound(config: dict, workdir: str | Path = ".") -> int | None:
    """An upper bound on the metric table's rows (evaluation images x methods x metrics x levels per model)
    from the data sets' sizes alone, no model built; None where a data set's size cannot be told yet."""
    try:
        images = {d: info.images for d, info in _used_datasets(config, Path(workdir)).items()}
    except (OSError, ValueError, KeyError):
        return None
    if any(n is None for n in images.values()):
        return None
    levels = len(_levels(config))
    return sum(images[spec["dataset"]] * len(_model_methods(config, spec)) * len(config["metrics"]["compute"]) * levels
               for spec in config["models"].values())


# ------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------

def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:,.4g} h" if seconds < 3600 * 1e5 else f"{seconds / 3600:.3g} h"


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.2g}"


def _levels_text(levels: list[tuple[str, float]]) -> str:
    kinds = defaultdict(int)
    for kind, _ in levels[1:]:
        kinds[kind] += 1
    return f"{len(levels)} levels (clean" + "".join(f" + {kind} {n}" for kind, n in kinds.items()) + ")"


def format_plan(plan: Plan) -> str:
    """The plan as text: a table per model, the totals, and warnings."""
    out = ["cambench plan: an estimate, before any job runs (docs/cluster.md §3)", ""]
    for m in plan.models:
        info = m.data
        head = f"== {m.model} ({m.architecture}) on {m.dataset}: "
        head += f"{info.images:,} images" if info.images is not None else "images unknown"
        out.append(head + f" of the evaluation split [{info.source}]")
        if info.shape is None:
            out += [f"   {note}" for note in m.notes] + [""]
            continue
        k, spatial = m.feature_shape[0], "x".join(map(str, m.feature_shape[1:]))
        out.append(f"   input {'x'.join(map(str, info.shape))}; target layer {m.target_layer}: K = {k} channels at "
                   f"{spatial}; the part after it is {100 * m.head_fraction:.2g} % of a forward's FLOPs")
        if m.calibration:
            c = m.calibration
            out.append(f"   one forward {c.forward_s * 1e3:.3g} ms/image, forward + backward "
                       f"{(c.forward_s + c.backward_s) * 1e3:.3g} ms/image ({c.describe()})")
        out.append(f"   {_levels_text(m.levels)}; per image and level:")
        out.append(f"   {'method':<28} {'forwards':>10} {'backwards':>10} {'head':>8} {'fwd-equiv':>10} {'time':>10}")
        rows = [("(shared pass)", m.capture)] + list(m.methods.items())
        heat = sum((w for _, w in rows), Work())
        rows.append(("= heatmap job", heat))
        metrics = sum(m.metrics_perturbed.values(), Work())
        rows += [(f"metric {name}", w) for name, w in m.metrics_perturbed.items() if w != Work()]
        rows.append(("= metric job", metrics))
        for label, w in rows:
            out.append(f"   {label:<28} {_count(w.forward):>10} {_count(w.backward):>10} {_count(w.head):>8} "
                       f"{_count(w.equivalents(m.head_fraction)):>10} {_duration(m.seconds(w)):>10}")
        if m.skipped:
            out.append(f"   not applicable to {m.architecture}, skipped: {', '.join(m.skipped)}")
        if info.images is not None:
            parts = ", ".join(f"{stage} {_duration(m.seconds(w))}" for stage, w in m.stages.items())
            out.append(f"   whole run: {_duration(m.seconds(m.total))} ({parts}); "
                       f"{m.total.equivalents(m.head_fraction):.3g} forward-equivalents")
            out.append(f"   {m.maps:,} maps, at most {m.metric_rows:,} metric rows; disk: "
                       + ", ".join(f"{what} {_size(size)}" for what, size in m.disk.items()))
        out += [f"   {note}" for note in m.notes]
        out.append("")
    images = sum(i.images or 0 for i in plan.datasets.values())
    seconds = plan.seconds()
    devices = sorted({m.calibration.device for m in plan.models if m.calibration})
    where = ", ".join(devices) or "no device (calibration off)"
    out.append(f"TOTAL: {images:,} evaluation images, {plan.total('maps'):,} maps, at most "
               f"{plan.total('metric_rows'):,} metric rows")
    out.append(f"   time: {_duration(seconds)} on {where} (device-hours "
               f"{'?' if seconds is None else f'{seconds / 3600:,.4g}'}, one job at a time)")
    out.append("   disk: " + ", ".join(f"{what} {_size(size)}" for what, size in plan.disk.items())
               + f"; total {_size(sum(plan.disk.values()))}")
    out.append(f"   Estimate: seconds = the work counted above x one timed forward / backward per image of "
               f"each model; data loading, writing, sorting, SSIM and ROAD's solves are not counted. "
               f"Disk: metric rows x {METRIC_ROW_BYTES:g} bytes in each of {METRIC_PARQUET_COPIES} parquet files and "
               f"{METRIC_CSV_ROW_BYTES:g} in results/metrics.csv (measured); maps, weights, data sets uncompressed.")
    if plan.device.startswith("cuda") and devices and not any(d.startswith("cuda") for d in devices):
        out.append(f"   The config runs on '{plan.device}', which this machine does not have: the time is for "
                   f"this CPU. The forward-equivalents do not depend on the hardware: divide them by your "
                   f"GPU's forwards per second (benchmarks/shard_throughput.py measures it).")
    unknown = [d for d, i in plan.datasets.items() if i.images is None]
    if unknown:
        out.append(f"   Not counted: {', '.join(unknown)} (images unknown; see above).")
    if (seconds or 0) > WARN_SECONDS or sum(plan.disk.values()) > WARN_BYTES:
        out.append(f"WARNING: this run is large: {_duration(seconds)} of device time, "
                   f"{_size(sum(plan.disk.values()))} of disk. Check the counts above before starting it.")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def load_config(path: str | Path, workdir: str | Path = ".") -> dict:
    """A config file validated against the checkout's schema, defaults filled in."""
    import yaml
    workdir = Path(workdir)
    with open(workdir / path) as f:
        config = yaml.safe_load(f) or {}
    return validate_config(config, workdir / "config" / "schema.yaml", workdir)


def _images_arg(values: list[str]) -> int | dict | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    out = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise argparse.ArgumentTypeError(f"--images: expected N or DATASET=N, got {value!r}")
        out[name] = int(count)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cambench.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", default="config/config.yaml")
    parser.add_argument("--workdir", default=".", help="the checkout (schema, results/, data roots)")
    parser.add_argument("--images", nargs="*", default=[], metavar="N|DATASET=N",
                        help="evaluation images of every data set (N) or of one (DATASET=N)")
    parser.add_argument("--no-calibrate", action="store_true", help="count the work only, time nothing")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads when timing")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.configfile, args.workdir)
        plan = make_plan(config, args.workdir, not args.no_calibrate, _images_arg(args.images), args.threads)
    except (ValueError, argparse.ArgumentTypeError, OSError) as err:
        print(f"cambench.plan: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(format_plan(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
