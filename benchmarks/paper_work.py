"""config/paper.yaml's work counted in ResNet-50 forward passes, for the GPU-hours estimate.

Runs the paper config's real heatmap and metric jobs (``cambench.pipeline.compute_heatmaps`` and
``compute_metrics``, the functions the rules call, with the config's methods, metrics, batch sizes
and memory budgets) on a few shapes images under a dispatch mode that counts (with torch's FLOP formulas) the
floating-point operations of every convolution and matrix product, forward and backward. Dividing by
the FLOPs of one plain ResNet-50 forward pass of one image at the same size gives the work per image
in *forward-equivalents*. That count does not depend on the hardware, and barely on the image size
(every ResNet-50 layer scales with the pixel count; --size must be a multiple of 32), so it is
measured at a small size on any device and scaled to the config's 50,000 images x 51 levels.

Device-hours follow as forward-equivalents / (forward passes per second of the device at 224 px):
pass --rate with a measured or published figure. Not counted: work that is not a convolution or
matrix product (ROAD's imputation solves, sorting, SSIM, the perturbations' arithmetic). Score-CAM
skips layer-4 channels that are constant over the image (one zero-image forward serves them), so its
count depends on the activations; below 64 px (a 2 x 2 layer-4 map) most channels are constant and
the count is meaningless.

--clean-only measures the clean level's two jobs only (on a CPU each job of the other kinds takes
about as long again) and counts every other level as the clean level plus its perturbation, which
both jobs of a level regenerate (FGSM: one forward and backward per image, PGD: one per step;
measured here by running the attack alone). What that leaves out is the robustness metrics'
own model work on a perturbed level (a prediction per image: a few forward-equivalents).
Usage: python benchmarks/paper_work.py [--device cpu] [--size 64] [--images 4] [--rate 1261] [--clean-only]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from job_inputs import standin_job_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from cambench.config import perturbation_sweep, validate_config
from cambench.jobs import HeatmapJob, MetricJob, job_params
from cambench.metrics import METRICS
from cambench.pipeline import compute_heatmaps, compute_metrics, perturbed_pixels, read_shard
from cambench.provenance import device_description

ROOT = Path(__file__).resolve().parents[1]
# The kinds whose jobs differ in model work: the clean level (no robustness metrics), a noise kind
# (the seven other noise kinds cost the same model work: their arithmetic is not a model pass), and
# the two adversarial kinds, which run the model to make the perturbation in every job.
KINDS = ("none", "gaussian", "fgsm", "pgd")
LABEL = [""]  # the metric being computed, set by the wrappers of label_metrics()


class FlopCount(TorchDispatchMode):
    """FLOPs of every op torch has a formula for (torch's FlopCounterMode adds module hooks, which
    break ``autograd.grad`` with respect to an input, as the adversarial perturbations use)."""

    def __init__(self):
        super().__init__()
        self.flops = 0
        self.by_label = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            self.flops += flops
            self.by_label[LABEL[0]] += flops
        return out


def label_metrics():
    """Every registered metric's function wrapped so that the FLOPs it causes are booked to its name
    (a benchmark-only patch of the registry's entries; the signature, hence parameter checks, is kept)."""
    entries = METRICS._entries
    for name, entry in list(entries.items()):
        def booked(*args, _fn=entry.fn, _name=name, **kwargs):
            LABEL[0] = _name
            try:
                return _fn(*args, **kwargs)
            finally:
                LABEL[0] = ""
        entries[name] = dataclasses.replace(entry, fn=functools.wraps(entry.fn)(booked))


def counted(fn, sync, by_label=None):
    with FlopCount() as counter:
        sync()
        start = time.perf_counter()
        fn()
        sync()
    if by_label is not None:
        by_label.update(counter.by_label)
    return counter.flops, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64, help="image side (a multiple of 32, at least 64)")
    parser.add_argument("--images", type=int, default=4, help="images (a multiple of the 4 classes)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="ResNet-50 forward passes per second of the target device at 224 px")
    parser.add_argument("--clean-only", action="store_true",
                        help="measure the clean level's jobs; other levels = clean + their perturbation")
    args = parser.parse_args()
    if args.size % 32 or args.size < 64 or args.images % 4:
        parser.error("--size must be a multiple of 32 from 64 up, and --images a multiple of 4")
    dev = torch.device(args.device)
    label_metrics()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    full_images = sum(d["standin"]["counts"]["test"] * len(d["standin"]["classes"])
                      for d in config["datasets"].values())
    (name, dataset), = config["datasets"].items()
    (model_name, model_spec), = config["models"].items()
    dataset["standin"].update(counts={"train": 1, "test": args.images // 4}, image_size=args.size)
    config["device"] = args.device
    config = validate_config(config, ROOT / "config" / "schema.yaml", ROOT)
    sweep = {kind: (levels, params) for kind, levels, params in perturbation_sweep(config)}
    cam = config["cam"]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, checkpoint, model = standin_job_inputs(tmp, dataset["standin"], model_spec["architecture"],
                                                     {"n_classes": len(dataset["standin"]["classes"])})
        net = model.to(dev)
        one = torch.rand(1, 3, args.size, args.size, device=dev)
        with torch.no_grad():
            forward_flops, _ = counted(lambda: net(one), sync)
        print(f"device: {device_description(dev)}; torch {torch.__version__}; ResNet-50 at {args.size} px, "
              f"{args.images} images; one forward = {forward_flops / 1e9:.3f} GFLOP per image")
        print(f"{'kind':<10} {'job':<9} {'fwd-equiv/image':>16} {'s/image here':>13}")
        per_image = {}
        for kind in KINDS:
            levels, pparams = sweep.get(kind, ([0.0], {}))
            level = 0.0 if kind == "none" else levels[len(levels) // 2]
            heat = tmp / f"{kind}.h5"
            if args.clean_only and kind != "none":
                ds = read_shard(data, cam["split"], None)
                attack, _ = counted(lambda: perturbed_pixels(
                    ds, slice(None), kind, level, config["seed"], dev, model=net,
                    target_layer=model_spec["target_layer"], params=pparams, batch_size=cam["batch_size"]), sync)
                equiv = attack / forward_flops / args.images
                for job in ("heatmaps", "metrics"):
                    per_image[kind, job] = per_image["none", job] + equiv
                print(f"{kind:<10} {'perturb':<9} {equiv:16,.1f}   (each job = clean + this)")
                continue
            # The rules' settings from the config (its device is --device), plus this level's.
            common = dict(model=model_name, perturbation=kind, level=level, perturbation_params=pparams)
            heatmap_job = HeatmapJob.from_params(job_params(HeatmapJob, config, methods=cam["methods"], **common))
            metric_job = MetricJob.from_params(job_params(MetricJob, config, dataset=name, **common))
            jobs = {
                "heatmaps": lambda: compute_heatmaps(data, checkpoint, heat, heatmap_job),
                "metrics": lambda: compute_metrics(data, checkpoint, heat, tmp / "none.h5", tmp / f"{kind}.parquet",
                                                   metric_job),
            }
            for job, fn in jobs.items():
                by_metric = {}
                flops, seconds = counted(fn, sync, by_metric)
                equiv = flops / forward_flops / args.images
                per_image[kind, job] = equiv
                print(f"{kind:<10} {job:<9} {equiv:16,.0f} {seconds / args.images:13.2f}")
                if kind == "none" and job == "metrics":  # where the metric job's work goes
                    for metric, part in sorted(by_metric.items(), key=lambda kv: -kv[1]):
                        share = part / forward_flops / args.images
                        print(f"{'':<10} {metric or '(outside metrics)':<24} {share:9,.0f}")

    levels_of = {kind: len(levels) for kind, (levels, _) in sweep.items()}
    adversarial = {"fgsm", "pgd"}
    total = 0.0
    for kind, n_levels in [("none", 1), *levels_of.items()]:
        stand = kind if kind in KINDS else ("gaussian" if kind not in adversarial else kind)
        total += n_levels * full_images * (per_image[stand, "heatmaps"] + per_image[stand, "metrics"])
    n_levels = 1 + sum(levels_of.values())
    print(f"config/paper.yaml: {full_images:,} images x {n_levels} levels = {total:.3e} forward-equivalents "
          f"({total / (full_images * n_levels):,.0f} per image and level)")
    if args.rate:
        print(f"at {args.rate:,.0f} forward passes per second: {total / args.rate / 3600:,.0f} device-hours "
              f"(one 1,000-image shard of one level: "
              f"{total / (full_images * n_levels) * 1000 / args.rate / 3600:.2f} h)")


if __name__ == "__main__":
    main()
