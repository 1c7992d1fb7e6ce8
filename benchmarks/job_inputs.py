"""What a benchmark of the workflow's jobs starts from: a prepared stand-in data set and a
random-weight checkpoint, as the prepare_dataset and train_model rules would leave them."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from torch import nn

from cambench.config import validate_config
from cambench.data import write_standin
from cambench.jobs import HeatmapJob, MetricJob, job_params
from cambench.models import build_model, save_checkpoint
from cambench.pipeline import compute_heatmaps, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]


def standin_job_inputs(folder: Path, standin: dict, architecture: str, params: dict) -> tuple[Path, Path, nn.Module]:
    """(dataset.h5, model.pt, the model in eval mode) in ``folder``; seeds 0 for the images and the weights."""
    write_standin(folder / "standin", copy.deepcopy(standin), seed=0)
    data, checkpoint = folder / "dataset.h5", folder / "model.pt"
    prepare_dataset("imagefolder", folder / "standin" / "data", data, mask_root=folder / "standin" / "masks")
    torch.manual_seed(0)
    model = build_model(architecture, **params).eval()
    save_checkpoint(checkpoint, model, architecture, params)
    return data, checkpoint, model


def default_metric_job(folder: Path, device: str) -> dict:
    """The default config's clean-level metric job for ``shapes_cnn``, ready to run: its stand-in
    test images (80), a random-weight checkpoint and the clean heatmaps of every method the job can
    explain alone (SyCAM's expression comes from a search rule and AME-CAM needs the multi-exit
    model: both left out). Returns ``compute_metrics``' keyword arguments but ``output``: the paths and
    ``job`` (a MetricJob)."""
    config = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                             ROOT / "config" / "schema.yaml", ROOT)
    (name, dataset), = config["datasets"].items()
    spec, cam = config["models"]["shapes_cnn"], config["cam"]
    methods = {m: p for m, p in cam["methods"].items() if m not in ("sycam", "amecam")}
    params = {"n_classes": len(dataset["standin"]["classes"]), **spec.get("params", {})}
    # The settings the rules take from the config, plus this job's (docs/design.md §4).
    common = dict(model="shapes_cnn", perturbation="none", level=0.0, device=device)
    standin = {**dataset["standin"], "counts": {**dataset["standin"]["counts"], "train": 1}}
    data, checkpoint, _ = standin_job_inputs(folder, standin, spec["architecture"], params)
    heatmaps = folder / "heatmaps.h5"
    compute_heatmaps(data, checkpoint, heatmaps,
                     HeatmapJob.from_params(job_params(HeatmapJob, config, methods=methods, **common)))
    return dict(dataset_path=data, model_path=checkpoint, heatmaps_path=heatmaps, clean_heatmaps_path=heatmaps,
                job=MetricJob.from_params(job_params(MetricJob, config, dataset=name, **common)))
