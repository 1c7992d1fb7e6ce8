"""What sharing model work across the methods of a metric job saves, measured in one run.

The default config's clean-level metric job (``cambench.pipeline.compute_metrics``, every metric of
config/config.yaml, 80 stand-in images, random-weight ``shapes_cnn``; ``job_inputs.default_metric_job``)
run alternately
  * shared, as the workflow runs it: one cache per table, so the metrics that re-explain images
    (max_sensitivity, mprt) explain every method in one engine pass per batch, and the images'
    logits and each map's explanation and ablation stacks are computed once;
  * unshared, as before that: no table of methods, and a fresh cache for every metric call except
    that the three ROAD metrics of a method share one and the axioms' channel terms are computed
    once per table (both always were).
Prints each run's seconds, the seconds of each metric summed over the methods in both modes, and
whether every value of the two tables is identical.
Usage: python benchmarks/metric_sharing.py [--device cpu] [--threads 1] [--rounds 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from job_inputs import default_metric_job

import cambench.pipeline as pipeline
from cambench.metrics import METRICS
from cambench.provenance import device_description


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    evaluate_applies = pipeline.evaluate_applies
    per_metric = {mode: defaultdict(float) for mode in ("shared", "unshared")}

    def timed(mode: str):
        road_caches, axiom_cache = {}, {}

        def call(net, images, heat, name, **kw):
            if mode == "unshared":
                kw.pop("table_methods")
                kw["cache"] = (road_caches.setdefault(kw["method"], {}) if name.startswith("road_") else
                               axiom_cache if METRICS.get(name).meta.get("family") == "axioms" else {})
            start = time.perf_counter()
            out = evaluate_applies(net, images, heat, name, **kw)
            per_metric[mode][name] += time.perf_counter() - start
            return out
        return call

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = default_metric_job(tmp, args.device)  # the paths and the MetricJob
        print(f"device: {device_description(torch.device(args.device))}")
        seconds, tables = defaultdict(list), {}
        for round_ in range(args.rounds):
            for mode in ("unshared", "shared"):
                pipeline.evaluate_applies = timed(mode)
                start = time.perf_counter()
                tables[mode] = pipeline.compute_metrics(output=tmp / f"metrics-{mode}.parquet", **inputs)
                seconds[mode].append(time.perf_counter() - start)
                print(f"round {round_}: {mode}: {seconds[mode][-1]:.1f} s", flush=True)
        pipeline.evaluate_applies = evaluate_applies
    rows = pd.DataFrame(per_metric).div(args.rounds).sort_values("unshared", ascending=False)
    rows["saved"] = rows["unshared"] - rows["shared"]
    print(rows[rows["saved"].abs() > 0.05].round(2).to_string())
    keys = ["method", "metric", "image_id"]
    a, b = (tables[m].sort_values(keys)["value"].to_numpy() for m in ("unshared", "shared"))
    print(f"job: unshared {np.mean(seconds['unshared']):.1f} s, shared {np.mean(seconds['shared']):.1f} s "
          f"({np.mean(seconds['unshared']) / np.mean(seconds['shared']):.2f} x); {len(a)} values, "
          f"identical: {bool(np.array_equal(a, b))}")


if __name__ == "__main__":
    main()
