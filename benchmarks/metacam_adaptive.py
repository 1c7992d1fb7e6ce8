"""What MetaCAM's adaptive k costs on top of its components, for the k grids a config may choose.

On a trained model and data set of a finished run (by default the embedded run's ``shapes_cnn``:
``make run`` first), explains the first ``--images`` test images with MetaCAM at a fixed k and with
adaptive k over each grid, one after the other in one process, and prints the CPU seconds of each and
the mean absolute difference of the adaptive maps from those of the first grid. Adaptive k runs
again inside every re-explanation of a metric job (max-sensitivity's draws, MPRT), so its cost
counts several times per level.
Usage: python benchmarks/metacam_adaptive.py [--model PATH] [--dataset PATH] [--images 80] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch

import cambench
from cambench.data import read_dataset
from cambench.pipeline import load_model

GRIDS = {  # label -> metacam parameters (the default config's choice is the last)
    "k = 10 (fixed)": {"k": 10},
    "adaptive, 5 k x ROAD at 4 %": {"k": "adaptive", "k_grid": [5, 10, 20, 30, 50],
                                    "metric_params": {"percentiles": [20, 40, 60, 80], "tol": 0.001}},
    "adaptive, 4 k x ROAD at 3 % (config.yaml)": {"k": "adaptive", "k_grid": [5, 10, 20, 40],
                                                  "metric_params": {"percentiles": [25, 50, 75], "tol": 0.001}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/shapes/shapes_cnn/model.pt")
    parser.add_argument("--dataset", default="results/shapes/dataset.h5")
    parser.add_argument("--layer", default="features.block4")
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, _ = load_model(args.model, torch.device("cpu"))
    images = torch.from_numpy(read_dataset(args.dataset, "test").images[:args.images]).float()
    print(f"{args.images} images, {args.threads} thread(s), layer {args.layer}; CPU seconds of explain_many")
    maps = {}
    for label, params in GRIDS.items():
        start = time.process_time()
        result = cambench.explain_many(net, images, {"metacam": {"consensus": "gated_mean", **params}}, args.layer,
                                       batch_size=64)
        maps[label] = result.maps["metacam"]
        print(f"{label:45s} {time.process_time() - start:7.2f} s")
    first, *rest = [m for label, m in maps.items() if "adaptive" in label]
    for label, m in zip([label for label in maps if "adaptive" in label][1:], rest):
        print(f"mean |map difference|, {label} vs the first adaptive grid: {(m - first).abs().mean().item():.4f}")


if __name__ == "__main__":
    main()
