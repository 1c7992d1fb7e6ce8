"""Deletion / insertion AUC throughput: cambench against a RISE-style per-image loop, same numbers.

The reference transcribes RISE's ``CausalMetric.single_run`` (eclique/RISE ``evaluation.py``): one
image at a time, one forward per step, pixels copied in place between steps, the model wrapped
with softmax and fed the *normalised* tensor; deletion's substrate is that tensor's zeros, and
insertion's is RISE's blur (``conv2d`` with ``gkern(11, 5)``, zero padding). cambench takes pixel
images (the model normalises itself), the dataset mean colour for deletion and its own blur for
insertion, which are the same inputs. (torchcam 0.4.0 has no DeletionInsertionMetric, and it
needs numpy < 2.)

Prints, on identical images and heatmaps, one line per metric:
  "deletion_auc cambench X s | reference Y s | speed-up Z x | max |diff| D"
and fails if the AUCs disagree by more than 1e-4.
Usage: python benchmarks/deletion_insertion.py [--device cpu] [--images 64] [--steps 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from cam_engine import timed_interleaved

import cambench
from cambench.models import build_model
from cambench.provenance import device_description

MEAN, STD = [0.5] * 3, [0.25] * 3
SIZE = 64


def rise_gkern(klen: int = 11, nsig: float = 5.0) -> torch.Tensor:
    """RISE's gkern: gaussian_filter of a delta, on the diagonal of a (3, 3, k, k) kernel."""
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1
    k = scipy.ndimage.gaussian_filter(delta, nsig)
    kern = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def rise_auc(scores: np.ndarray) -> float:
    return float((scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1))


def rise_single_run(net, img: torch.Tensor, explanation: np.ndarray, mode: str, step: int, substrate_fn) -> float:
    """One image (1, C, H, W), normalised; as RISE's single_run without its plotting."""
    hw = explanation.size
    with torch.no_grad():
        c = int(net(img).argmax(1))
        n_steps = (hw + step - 1) // step
        start, finish = (img.clone(), substrate_fn(img)) if mode == "del" else (substrate_fn(img), img.clone())
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
        start_flat, finish_flat = start.view(1, 3, hw), finish.view(1, 3, hw)
        for i in range(n_steps + 1):
            scores[i] = float(net(start)[0, c])
            if i < n_steps:
                coords = torch.from_numpy(salient_order[:, step * i:step * (i + 1)].copy()).to(img.device)[0]
                start_flat[0, :, coords] = finish_flat[0, :, coords]
    return rise_auc(scores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_model("small_cnn", n_classes=4, in_channels=3, mean=MEAN, std=STD,
                        widths=[16, 32, 64, 64]).eval().to(dev)
    for m in model.modules():  # untrained BN statistics give near-constant outputs; vary them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.05, 0.5)
    x = torch.rand(args.images, 3, SIZE, SIZE, device=dev)
    # smooth maps with a little noise, so the pixel order has no ties (RISE's argsort is unstable)
    coarse = torch.rand(args.images, 1, 8, 8, device=dev)
    maps = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    maps = (maps + 1e-3 * torch.rand_like(maps)).clamp(0, 1)
    fill = torch.tensor(MEAN, device=dev)
    with torch.no_grad():
        targets = model(x).argmax(1)

    softmax_net = torch.nn.Sequential(model[1:], torch.nn.Softmax(dim=1))   # RISE: normalised input, softmax
    normalised = model.normalize(x).detach()
    kern = rise_gkern().to(dev)
    substrates = {"deletion_auc": ("del", torch.zeros_like),
                  "insertion_auc": ("ins", lambda z: F.conv2d(z, kern, padding=kern.shape[-1] // 2))}
    step = math.ceil(SIZE * SIZE / args.steps)
    explanations = maps.cpu().numpy()
    results = {}

    def ours(metric):
        params = {"substrate": "mean"} if metric == "deletion_auc" else {}
        results[("ours", metric)] = cambench.evaluate(model, x, maps, metric, targets=targets,
                                                      steps=args.steps, fill=fill, **params)

    def reference(metric):
        mode, fn = substrates[metric]
        results[("ref", metric)] = torch.tensor([rise_single_run(softmax_net, normalised[i:i + 1], explanations[i],
                                                                 mode, step, fn) for i in range(args.images)])

    fns = {}
    for metric in substrates:
        fns[f"ours_{metric}"] = lambda m=metric: ours(m)
        fns[f"ref_{metric}"] = lambda m=metric: reference(m)
    t = timed_interleaved(fns, args.repeats, sync)
    print(f"device: {device_description(dev)}; small_cnn [16, 32, 64, 64], {SIZE} px, {args.images} images, "
          f"{args.steps} steps ({step} px per step), torch threads {torch.get_num_threads()}; "
          f"median of {args.repeats} interleaved rounds")
    worst = 0.0
    for metric in substrates:
        diff = (results[("ours", metric)].cpu().double() - results[("ref", metric)].double()).abs().max().item()
        worst = max(worst, diff)
        ours_t, ref_t = t[f"ours_{metric}"], t[f"ref_{metric}"]
        print(f"{metric} cambench {ours_t:.3f} s | reference {ref_t:.3f} s | speed-up {ref_t / ours_t:.1f} x | "
              f"max |diff| {diff:.2e} (mean AUC {results[('ours', metric)].mean().item():.4f})")
    assert worst < 1e-4, f"cambench and the RISE-style reference disagree: max |diff| {worst:.2e}"


if __name__ == "__main__":
    main()
