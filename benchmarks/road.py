"""ROAD (noisy linear imputation) cost and agreement vs pytorch-grad-cam, in one run on identical inputs.

Prints, for a small_cnn (random weights, BatchNorm statistics set from the inputs, 4 classes) at
64 px, 32 images, percentiles 10..90:
  * road_combined through ``cambench.evaluate`` against pytorch-grad-cam's ``ROADCombined``, and
    with ``--metrics all`` also road_morf / road_lerf against ``ROADMostRelevantFirstAverage`` /
    ``ROADLeastRelevantFirstAverage`` (about twice the run time): median seconds, the speed-up,
    and the max |difference| of the per-image values.
Both run without imputation noise (grad-cam: its imputer's default noise set to 0; cambench:
noise=0 and tie_noise=0, as grad-cam adds no tie-breaking noise) and on the logit, which is what
grad-cam's ClassifierOutputTarget returns. As in tests/test_road.py, both get the images in pixel
space and the model normalises internally; grad-cam therefore imputes in pixel space, which with
noise 0 gives the same filled image as imputing the normalised tensor (the imputation is an
average of neighbours, so it commutes with a per-channel affine map).
Usage: python benchmarks/road.py [--device cuda] [--images 32] [--size 64] [--repeats 1] [--metrics all]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from cam_engine import timed_interleaved_results

import cambench
from cambench.models import build_model
from cambench.provenance import device_description

PERCENTILES = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set BatchNorm running statistics from x, so that the random network's activations are of
    unit scale: with the init statistics its logits barely move (|ROAD| ~ 1e-4) and agreement to
    1e-8 would say little."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass sets the statistics of x
    with torch.no_grad():
        model.train()(x)
    model.eval()


def smooth_maps(n: int, size: int, coarse: int = 8) -> torch.Tensor:
    """CAM-like maps: bilinear up-sampling of a coarse random grid, min-max normalised per map."""
    maps = torch.nn.functional.interpolate(torch.rand(n, 1, coarse, coarse), size=(size, size),
                                           mode="bilinear").squeeze(1)
    lo, hi = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return (maps - lo) / (hi - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed rounds (one ROADCombined call on 32 images is ~10-20 s on 2 cores)")
    ap.add_argument("--metrics", choices=("combined", "all"), default="combined")
    ap.add_argument("--tol", type=float, default=1e-6, help="cambench's CG tolerance (its default: 1e-6)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    from pytorch_grad_cam.metrics import road as pgc_road
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    # The averagers build a fresh imputer per percentile: set the default noise to 0 (as the test does).
    pgc_road.NoisyLinearImputer.__init__.__defaults__ = (0.0, pgc_road.neighbors_weights)

    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=4, in_channels=3, mean=[.5] * 3, std=[.25] * 3,
                        widths=[16, 32, 64, 64]).to(dev)
    x = torch.rand(args.images, 3, args.size, args.size, device=dev)
    calibrate_batchnorm(model, x)
    cams = smooth_maps(args.images, args.size).to(dev)
    with torch.no_grad():
        targets = model(x).argmax(1)
    cams_np = cams.cpu().numpy()
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
    common = dict(percentiles=PERCENTILES, noise=0.0, tie_noise=0.0, score="logit", tol=args.tol)
    refs = {"road_morf": pgc_road.ROADMostRelevantFirstAverage(PERCENTILES),
            "road_lerf": pgc_road.ROADLeastRelevantFirstAverage(PERCENTILES),
            "road_combined": pgc_road.ROADCombined(PERCENTILES)}
    if args.metrics == "combined":
        refs = {"road_combined": refs["road_combined"]}
    fns = {}
    for name, ref in refs.items():
        fns[f"ours_{name}"] = lambda n, name=name: cambench.evaluate(
            model, x[:n], cams[:n], name, targets=targets[:n], **common).cpu().numpy()
        fns[f"ref_{name}"] = lambda n, ref=ref: np.asarray(ref(x[:n], cams_np[:n], pgc_targets[:n], model))
    load = os.getloadavg()[0]
    warm = {k: (lambda f=f: f(2)) for k, f in fns.items()}             # warm-up on 2 images
    full = {k: (lambda f=f: f(args.images)) for k, f in fns.items()}
    t, values = timed_interleaved_results(full, args.repeats, sync, warmups=warm)
    print(f"1-min load average before / after: {load:.2f} / {os.getloadavg()[0]:.2f} (other processes share the CPU)")
    print(f"device: {device_description(dev)}; small_cnn, {args.size} px, {args.images} images, "
          f"percentiles {PERCENTILES[0]}..{PERCENTILES[-1]} ({len(PERCENTILES)}); noise 0, logit, CG tol {args.tol:g}; "
          f"median of {args.repeats} interleaved round(s) after a warm-up")
    for name in refs:
        ours, ref = t[f"ours_{name}"], t[f"ref_{name}"]
        diff = np.abs(values[f"ours_{name}"] - values[f"ref_{name}"]).max()
        scale = np.abs(values[f"ref_{name}"]).max()
        print(f"{name:13s} cambench {ours:.3f} s | grad-cam {ref:.3f} s | speed-up {ref / ours:.2f} x | "
              f"max |diff| {diff:.1e} (values up to {scale:.2f})")


if __name__ == "__main__":
    main()
