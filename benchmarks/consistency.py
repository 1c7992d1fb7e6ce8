"""SSIM consistency cost and agreement vs scikit-image, in one run on identical inputs.

Prints, for N pairs of 64×64 maps and M pairs of 32³ volumes (CAM-like maps and a perturbed copy):
  * ``cambench.evaluate(..., "consistency")`` (batched SSIM in torch, similarity="ssim") against
    ``skimage.metrics.structural_similarity(a, b, data_range=1)`` called per pair, the defaults our
    ssim mirrors: median seconds, speed-up, and the max |difference| of the per-pair values.
skimage is timed on the float32 maps as given (it then computes in float32); the difference is
also printed against skimage on the same values cast to float64 (our ssim computes in float64 and
returns float32, so that is the precise reference).
Usage: python benchmarks/consistency.py [--device cuda] [--images 1024] [--volumes 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from cam_engine import timed_interleaved_results
from skimage.metrics import structural_similarity

import cambench
from cambench.provenance import device_description


def map_pairs(n: int, size: tuple[int, ...], coarse: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean maps (up-sampled coarse noise, min-max normalised) and perturbed copies (clean plus
    smoothed noise, clipped to [0, 1]): SSIM values spread over the middle of [-1, 1]."""
    mode = "bilinear" if len(size) == 2 else "trilinear"

    def smooth() -> torch.Tensor:
        return F.interpolate(torch.rand((n, 1) + (coarse,) * len(size)), size=size, mode=mode).squeeze(1)

    clean = smooth()
    dims = tuple(range(1, clean.ndim))
    clean = (clean - clean.amin(dim=dims, keepdim=True)) / (clean.amax(dim=dims, keepdim=True)
                                                            - clean.amin(dim=dims, keepdim=True))
    # per-pair noise strength, so that the pairs range from near-identical to unrelated
    strength = torch.linspace(0.05, 1.0, n).view((n,) + (1,) * len(size))
    noisy = clean + strength * (torch.rand_like(clean) - 0.5) + strength * (smooth() - 0.5)
    return noisy.clamp(0, 1), clean


def compare(label: str, heatmaps: torch.Tensor, reference: torch.Tensor, dev: torch.device,
            repeats: int, sync) -> None:
    n = heatmaps.shape[0]
    maps, ref_maps = heatmaps.to(dev), reference.to(dev)
    images = torch.zeros((1, 1) + tuple(maps.shape[1:]), device=dev).expand(n, 1, *maps.shape[1:])
    labels = torch.zeros(n, dtype=torch.long, device=dev)  # unchanged predictions: every pair applies
    a32, b32 = heatmaps.numpy(), reference.numpy()
    fns = {"ours": lambda: cambench.evaluate(None, images, maps, "consistency", targets=labels,
                                             reference=ref_maps, predictions=labels,
                                             reference_predictions=labels).cpu().numpy(),
           "ref": lambda: np.array([structural_similarity(a, b, data_range=1.0) for a, b in zip(a32, b32)])}
    t, values = timed_interleaved_results(fns, repeats, sync)
    a64, b64 = a32.astype(np.float64), b32.astype(np.float64)
    ref64 = np.array([structural_similarity(a, b, data_range=1.0) for a, b in zip(a64, b64)])
    diff32 = np.abs(values["ours"] - values["ref"]).max()
    diff64 = np.abs(values["ours"] - ref64).max()
    print(f"consistency {label}: cambench {t['ours']:.4f} s | skimage {t['ref']:.4f} s | "
          f"speed-up {t['ref'] / t['ours']:.1f} x | max |diff| {diff32:.1e} (skimage float64: {diff64:.1e}); "
          f"SSIM range {ref64.min():.2f}..{ref64.max():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=1024, help="pairs of 64x64 maps")
    ap.add_argument("--volumes", type=int, default=64, help="pairs of 32^3 volumes")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    pairs_2d = map_pairs(args.images, (64, 64))
    pairs_3d = map_pairs(args.volumes, (32, 32, 32))
    load = os.getloadavg()[0]
    print(f"device: {device_description(dev)}; skimage per pair on the CPU; "
          f"median of {args.repeats} interleaved rounds after a warm-up")
    compare(f"{args.images} pairs 64x64", *pairs_2d, dev, args.repeats, sync)
    compare(f"{args.volumes} pairs 32^3", *pairs_3d, dev, args.repeats, sync)
    print(f"1-min load average before / after: {load:.2f} / {os.getloadavg()[0]:.2f} (other processes share the CPU)")


if __name__ == "__main__":
    main()
