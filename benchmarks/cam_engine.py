"""Gradient-family CAM cost, measured in one run on identical inputs.

Prints, for ResNet-50 at 224 px, batch 16 (torchvision, random weights):
  * ratio = time of one cambench call computing Grad-CAM, Grad-CAM++ and XGrad-CAM together /
    time of one plain forward pass under torch.no_grad (the floor is ~1 forward + a partial backward);
  * the same ratio per method for a single-method call;
  * throughput ratio vs the grad-cam package (one object per method, as that package is used).
Usage: python benchmarks/cam_engine.py [--device cuda] [--batch 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import cambench
from cambench.provenance import device_description


def timed_interleaved_results(fns: dict, repeats: int, sync, warmups: dict | None = None) -> tuple[dict, dict]:
    """Median seconds per callable over round-robin rounds (drift hits every candidate alike),
    and each callable's result. The warm-up is one call of each callable, or of ``warmups[key]``
    (e.g. the same work on fewer inputs) when given; the results then come from the first round."""
    results = {key: (warmups or fns)[key]() for key in fns}
    sync()
    times = {k: [] for k in fns}
    for round_ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            out = fn()
            sync()
            times[key].append(time.perf_counter() - start)
            if warmups and round_ == 0:
                results[key] = out
    return {k: statistics.median(v) for k, v in times.items()}, results


def timed_interleaved(fns: dict, repeats: int, sync) -> dict:
    return timed_interleaved_results(fns, repeats, sync)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval().to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    targets = model(x).argmax(1)

    def forward():
        with torch.no_grad():
            model(x)

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    ref_cls = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "xgradcam": "XGradCAM"}
    tgt = [ClassifierOutputTarget(int(t)) for t in targets]
    methods = list(ref_cls)
    refs = {m: getattr(pytorch_grad_cam, cls)(model=model, target_layers=[model.layer4]) for m, cls in ref_cls.items()}
    fns = {"forward": forward,
           "ours_all": lambda: cambench.explain_many(model, x, methods, "layer4", targets)}
    for m in methods:
        fns[f"ours_{m}"] = lambda m=m: cambench.explain(model, x, m, "layer4", targets)
        fns[f"ref_{m}"] = lambda m=m: refs[m](input_tensor=x, targets=tgt)
    t = timed_interleaved(fns, args.repeats, sync)
    for cam in refs.values():
        cam.__exit__(None, None, None)
    fwd = t["forward"]
    print(f"device: {device_description(dev)}; ResNet-50, {args.size} px, batch {args.batch}; "
          f"median of {args.repeats} interleaved rounds")
    print(f"plain forward (no_grad): {fwd:.3f} s")
    print(f"cambench, 3 methods in one pass: {t['ours_all']:.3f} s = {t['ours_all'] / fwd:.2f} x forward")
    for m in methods:
        ours, ref = t[f"ours_{m}"], t[f"ref_{m}"]
        print(f"{m:10s} cambench {ours:.3f} s ({ours / fwd:.2f} x forward) | grad-cam {ref:.3f} s "
              f"({ref / fwd:.2f} x forward) | speed-up {ref / ours:.2f} x")
    total_ref = sum(t[f"ref_{m}"] for m in methods)
    print(f"all three: grad-cam {total_ref:.3f} s vs cambench one pass {t['ours_all']:.3f} s: "
          f"{total_ref / t['ours_all']:.2f} x")


if __name__ == "__main__":
    main()
