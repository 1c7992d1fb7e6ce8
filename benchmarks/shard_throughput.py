"""Per-image cost of config/paper.yaml's heatmap and metric jobs, for planning a full run.

Measured in one run on identical inputs: ResNet-50 (torchvision, random weights) at 224 px, a batch
of --images images, the 15 methods of config/paper.yaml in one explain_many call (one heatmap job's
work per batch), and the paper config's metrics on the maps of --metric-methods of those methods
(the metrics that re-explain images on all of them, in the shared passes of the metric job).
Prints seconds per image for the heatmaps, per image x method for each metric, and the resulting
time of one 1,000-image shard and of the whole config (50,000 images x 51 levels), in device-hours.
Usage: python benchmarks/shard_throughput.py [--device cuda] [--images 4] [--metric-methods 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torchvision
import yaml

import cambench
from cambench.metrics import METRICS
from cambench.pipeline import metric_params
from cambench.provenance import device_description

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, sync):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--metric-methods", type=int, default=1)
    parser.add_argument("--size", type=int, default=224,
                        help="image side (the config's is 224; smaller for a CPU smoke run)")
    args = parser.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    methods, metrics = dict(paper["cam"]["methods"]), paper["metrics"]["compute"]
    methods["cam"] = {**(methods.get("cam") or {}), "fc_layer": "fc"}  # bare torchvision: name the head
    levels = 1 + sum(len(v["levels"] if isinstance(v, dict) else v) for v in paper["perturbations"].values())
    images_total = sum(c["standin"]["counts"]["test"] * len(c["standin"]["classes"])
                       for c in paper["datasets"].values())

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(dev)
    images = torch.rand(args.images, 3, args.size, args.size, device=dev)
    reference = images.clamp(0, 1)
    cambench.explain(model, images[:1], "gradcam", "layer4")  # warm-up
    seconds, result = timed(lambda: cambench.explain_many(model, images, methods, "layer4", memory_mb=4096), sync)
    heat_per_image = seconds / args.images
    print(f"device: {device_description(dev)}; torch {torch.__version__}; {args.images} images, {args.size} px, "
          "ResNet-50")
    print(f"heatmaps, {len(methods)} methods in one call: {heat_per_image:.2f} s per image")

    chosen = list(methods)[:args.metric_methods]
    # Metrics that re-explain images do it for every method of the table in shared engine passes
    # (as the metric job does): they are timed over all methods, the others over the chosen ones.
    table = {m: (methods[m], result.maps[m]) for m in methods}
    metric_per_image = 0.0
    for name, params in metrics.items():
        full = metric_params(name, params, paper["metrics"]["score"])
        shared = "method" in METRICS.get(name).meta.get("needs", ())
        extra = {"reference": result.maps[chosen[0]], "network": model, "target_layer": "layer4",
                 "method": chosen[0], "method_params": methods[chosen[0]],
                 "fill": reference.mean(dim=(0, 2, 3)), "memory_mb": 4096}
        if shared:
            extra.update(cache={}, table_methods=table)
        cost = 0.0
        timed_methods = list(methods) if shared else chosen
        for method in timed_methods:
            extra["method"], extra["method_params"] = method, methods[method]
            try:
                s, _ = timed(lambda: cambench.evaluate(model, images, result.maps[method], name, **extra, **full), sync)
            except (TypeError, ValueError) as err:  # a metric that needs inputs this sketch does not build
                print(f"  {name}: skipped ({str(err)[:80]})")
                s = float("nan")
            cost += s
        per = cost / (args.images * len(timed_methods))
        print(f"  {name:<24} {per:8.3f} s per image x method")
        if per == per:
            metric_per_image += per
    metric_per_image *= len(methods)
    shard = 1000 * (heat_per_image + metric_per_image)
    total_hours = images_total * levels * (heat_per_image + metric_per_image) / 3600
    print(f"metrics, all {len(metrics)} for {len(methods)} methods: {metric_per_image:.1f} s per image")
    print(f"one 1,000-image shard of one level (heatmap + metric job): {shard / 3600:.2f} h")
    print(f"config/paper.yaml ({images_total} images x {levels} levels): {total_hours:.0f} device-hours on this device")


if __name__ == "__main__":
    main()
