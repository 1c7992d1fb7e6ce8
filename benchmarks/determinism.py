"""Run-to-run repeatability of every CAM method, measured in one run on identical inputs.

Prints, for ResNet-18 at 224 px with random weights (torchvision), per method: the largest
absolute difference between two identical explain_many calls, with deterministic kernels on
(what every workflow job uses, config ``deterministic: true``) and off. On CPU both are 0; on a
GPU the "off" column shows what the switch buys, and the "on" column is the tolerance to state.
Usage: python benchmarks/determinism.py [--device cuda] [--batch 16]
"""
from __future__ import annotations

import argparse

import torch
import torchvision

import cambench
from cambench.provenance import device_description
from cambench.scripting import set_deterministic

METHODS = {"gradcam": {}, "gradcampp": {}, "xgradcam": {}, "hirescam": {}, "layercam": {}, "eigencam": {},
           "scorecam": {}, "ablationcam": {}, "finercam": {}, "cfcam": {}, "micam": {}}


def two_runs(model, images, layer) -> dict[str, float]:
    runs = [cambench.explain_many(model, images, METHODS, layer, memory_mb=2048).maps for _ in range(2)]
    return {m: float((runs[0][m] - runs[1][m]).abs().max()) for m in METHODS}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(dev)
    images = torch.rand(args.batch, 3, 224, 224, device=dev)
    results = {}
    for enabled in (True, False):
        set_deterministic(enabled)
        results[enabled] = two_runs(model, images, "layer4")
    set_deterministic(True)
    print(f"device: {device_description(dev)}; torch {torch.__version__}; batch {args.batch}, 224 px, ResNet-18")
    print(f"{'method':<12} {'max |diff| deterministic':>26} {'max |diff| not':>16}")
    for m in METHODS:
        print(f"{m:<12} {results[True][m]:>26.3g} {results[False][m]:>16.3g}")


if __name__ == "__main__":
    main()
