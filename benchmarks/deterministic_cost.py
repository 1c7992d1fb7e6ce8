"""What deterministic kernels cost a metric job on this device, measured in one run.

The default config's clean-level metric job (``cambench.pipeline.compute_metrics``, every metric of
config/config.yaml) on its 80 stand-in test images with a random-weight ``shapes_cnn``, run with
``set_deterministic(True)`` and ``(False)`` alternately, --rounds times, on --threads torch threads.
Prints each run's seconds and the ratio of the means (the config key ``deterministic``).
Usage: python benchmarks/deterministic_cost.py [--device cpu] [--threads 1] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cambench.config import validate_config
from cambench.pipeline import compute_heatmaps, compute_metrics
from cambench.provenance import device_description
from cambench.scripting import set_deterministic
from job_inputs import standin_job_inputs

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = validate_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                             ROOT / "config" / "schema.yaml", ROOT)
    (name, dataset), = config["datasets"].items()
    spec, cam, met = config["models"]["shapes_cnn"], config["cam"], config["metrics"]
    # SyCAM's expression comes from a search rule and AME-CAM needs the multi-exit model: left out
    methods = {m: p for m, p in cam["methods"].items() if m not in ("sycam", "amecam")}
    params = {"n_classes": len(dataset["standin"]["classes"]), **spec.get("params", {})}
    common = dict(perturbation="none", level=0.0, split=cam["split"], seed=config["seed"], device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        standin = {**dataset["standin"], "counts": {**dataset["standin"]["counts"], "train": 1}}
        data, checkpoint, _ = standin_job_inputs(tmp, standin, spec["architecture"], params)
        compute_heatmaps(data, checkpoint, tmp / "heatmaps.h5", methods=methods, target_layer=spec["target_layer"],
                         class_source=cam["class_source"], batch_size=cam["batch_size"], dtype=cam["dtype"],
                         memory_mb=cam["memory_mb"], **common)
        print(f"device: {device_description(torch.device(args.device))}")
        seconds = {True: [], False: []}
        for round_ in range(args.rounds):
            for deterministic in (True, False):
                set_deterministic(deterministic)
                start = time.perf_counter()
                compute_metrics(data, checkpoint, tmp / "heatmaps.h5", tmp / "heatmaps.h5",
                                tmp / f"metrics-{deterministic}.parquet", metrics=met["compute"], score=met["score"],
                                memory_mb=met["memory_mb"], dataset=name, model="shapes_cnn",
                                batch_size=cam["batch_size"], **common)
                seconds[deterministic].append(time.perf_counter() - start)
                print(f"round {round_}: deterministic={deterministic}: {seconds[deterministic][-1]:.1f} s", flush=True)
        ratio = statistics.mean(seconds[True]) / statistics.mean(seconds[False])
        print(f"deterministic on / off: {ratio:.3f}")


if __name__ == "__main__":
    main()
