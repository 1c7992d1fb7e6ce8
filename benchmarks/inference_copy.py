"""The inference copy (Conv/BN folded, channels-last on CPU) vs the model as it is, no-grad forwards.

Prints, per model and batch size, measured in one run on identical inputs: the median time of one
forward of the eager model and of ``cambench.inference.inference_copy``, their ratio, and the
largest logit difference. These are the forwards of Score-CAM's masked inputs and of the metrics.
Usage: python benchmarks/inference_copy.py [--device cuda] [--repeats 7]
"""
from __future__ import annotations

import argparse

import torch
import torchvision
from cam_engine import timed_interleaved

from cambench.inference import inference_copy
from cambench.models import build_model
from cambench.provenance import device_description

CASES = [("small_cnn", 64, 64), ("small_cnn", 64, 512), ("resnet18", 224, 13), ("resnet50", 224, 16)]


def build(name: str) -> torch.nn.Module:
    if name == "small_cnn":
        return build_model("small_cnn", n_classes=4, widths=[16, 32, 64, 64])
    return getattr(torchvision.models, name)(weights=None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device: {device_description(dev)}; median of {args.repeats} interleaved rounds")
    for name, size, batch in CASES:
        torch.manual_seed(0)
        model = build(name).eval().to(dev)
        x = torch.rand(batch, 3, size, size, device=dev)
        fast, channels_last = inference_copy(model, x)
        with torch.no_grad():
            diff = float((fast(x) - model(x)).abs().max())

        def eager():
            with torch.no_grad():
                model(x)

        def copied():
            with torch.no_grad():
                fast(x)
        t = timed_interleaved({"eager": eager, "copy": copied}, args.repeats, sync)
        print(f"{name:9s} {size} px, batch {batch:3d}: eager {t['eager'] * 1e3:8.1f} ms | copy "
              f"{t['copy'] * 1e3:8.1f} ms ({'channels-last, ' if channels_last else ''}folded) | "
              f"{t['eager'] / t['copy']:.2f} x | max logit difference {diff:.1e}")


if __name__ == "__main__":
    main()
