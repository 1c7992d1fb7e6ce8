"""What a benchmark of the workflow's jobs starts from: a prepared stand-in data set and a
random-weight checkpoint, as the prepare_dataset and train_model rules would leave them."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from cambench.models import build_model, save_checkpoint
from cambench.pipeline import generate_standin, prepare_dataset


def standin_job_inputs(folder: Path, standin: dict, architecture: str, params: dict) -> tuple[Path, Path, nn.Module]:
    """(dataset.h5, model.pt, the model in eval mode) in ``folder``; seeds 0 for the images and the weights."""
    generate_standin(folder / "standin", copy.deepcopy(standin), seed=0)
    data, checkpoint = folder / "dataset.h5", folder / "model.pt"
    prepare_dataset("imagefolder", folder / "standin" / "data", data, mask_root=folder / "standin" / "masks")
    torch.manual_seed(0)
    model = build_model(architecture, **params).eval()
    save_checkpoint(checkpoint, model, architecture, params)
    return data, checkpoint, model
