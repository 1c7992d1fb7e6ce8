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
from job_inputs import default_metric_job

from cambench.pipeline import compute_metrics
from cambench.provenance import device_description
from cambench.scripting import set_deterministic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = default_metric_job(tmp, args.device)  # the paths and the MetricJob
        print(f"device: {device_description(torch.device(args.device))}")
        seconds = {True: [], False: []}
        for round_ in range(args.rounds):
            for deterministic in (True, False):
                set_deterministic(deterministic)
                start = time.perf_counter()
                compute_metrics(output=tmp / f"metrics-{deterministic}.parquet", **inputs)
                seconds[deterministic].append(time.perf_counter() - start)
                print(f"round {round_}: deterministic={deterministic}: {seconds[deterministic][-1]:.1f} s", flush=True)
        ratio = statistics.mean(seconds[True]) / statistics.mean(seconds[False])
        print(f"deterministic on / off: {ratio:.3f}")


if __name__ == "__main__":
    main()
