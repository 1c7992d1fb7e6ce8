"""Perturbation CAMs (Score-CAM, Ablation-CAM): cost vs the grad-cam package and vs their own forwards.

Prints, measured in one run on identical inputs (torchvision model with random weights):
  * speed-up = grad-cam time / cambench time, per method;
  * Score-CAM overhead = cambench Score-CAM time / time of its N*K masked forward passes alone
    (the same chunks, with the masked inputs built outside the timed region);
  * Ablation-CAM time / one plain forward: the head replay makes it cost about one forward.
Usage: python benchmarks/cam_perturbation.py [--arch resnet50] [--size 224] [--batch 2] [--device cuda]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # grad-cam draws a progress bar per image

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision
from cam_engine import timed_interleaved

import cambench
from cambench.engine import capture
from cambench.inference import inference_copy
from cambench.provenance import device_description

LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "vgg16": "features.29"}


def masked_forwards(model, x, layer, memory_mb: float):
    """A callable that runs only Score-CAM's masked forward passes: the same chunks through the
    same inference copy as cambench, with every masked input built beforehand (outside the timing)."""
    inputs = capture(model, x, layer, need_gradients=False, memory_mb=memory_mb)
    acts = inputs.activations
    n, k = acts.shape[:2]
    flat = acts.reshape(n * k, 1, *acts.shape[2:])
    live = (flat.flatten(1).amax(1) > flat.flatten(1).amin(1)).nonzero().squeeze(1)
    chunk = inputs.input_rows_per_chunk()
    batches = []
    with inputs.fast_forwards() as images:
        for i in range(0, live.numel(), chunk):
            rows = live[i:i + chunk]
            up = F.interpolate(flat[rows], size=x.shape[2:], mode="bilinear", align_corners=True)
            lo = up.flatten(1).amin(1).view(-1, 1, 1, 1)
            hi = up.flatten(1).amax(1).view(-1, 1, 1, 1)
            batches.append(images[rows // k] * (up - lo) / (hi - lo + 1e-8))
    fast = inference_copy(model, x)[0]

    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                fast(batch)
    return run, int(live.numel())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet50", choices=sorted(LAYERS))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-mb", type=float, default=1024.0)
    ap.add_argument("--ref-batch", type=int, default=0,
                    help="grad-cam's batch size for masked inputs (0: its defaults, 16 and 32)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None).eval().to(dev)
    layer_name = LAYERS[args.arch]
    layer = cambench.engine.resolve_layer(model, layer_name)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    targets = model(x).argmax(1)

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    tgt = [ClassifierOutputTarget(int(t)) for t in targets]
    score_ref = pytorch_grad_cam.ScoreCAM(model=model, target_layers=[layer])
    ablation_ref = pytorch_grad_cam.AblationCAM(model=model, target_layers=[layer],
                                                batch_size=args.ref_batch or 32)
    if args.ref_batch:
        score_ref.batch_size = args.ref_batch

    def forward():
        with torch.no_grad():
            model(x)

    fns = {
        "forward": forward,
        "ours_scorecam": lambda: cambench.explain(model, x, "scorecam", layer_name, targets, memory_mb=args.memory_mb),
        "ref_scorecam": lambda: score_ref(input_tensor=x, targets=tgt),
        "ours_ablationcam": lambda: cambench.explain(model, x, "ablationcam", layer_name, targets,
                                                     memory_mb=args.memory_mb),
        "ref_ablationcam": lambda: ablation_ref(input_tensor=x, targets=tgt),
    }
    fns["scorecam_forwards_alone"], n_masked = masked_forwards(model, x, layer, args.memory_mb)
    t = timed_interleaved(fns, args.repeats, sync)  # every candidate in the same rounds
    for cam in (score_ref, ablation_ref):
        cam.__exit__(None, None, None)
    k = cambench.engine.capture(model, x[:1], layer, need_gradients=False).activations.shape[1]
    print(f"device: {device_description(dev)}; {args.arch} ({layer_name}, K = {k}), {args.size} px, "
          f"batch {args.batch}; median of {args.repeats} interleaved rounds; memory budget {args.memory_mb:.0f} MiB")
    print(f"plain forward (no_grad): {t['forward']:.3f} s")
    for m in ("scorecam", "ablationcam"):
        ours, ref = t[f"ours_{m}"], t[f"ref_{m}"]
        print(f"{m:12s} cambench {ours:.3f} s | grad-cam {ref:.3f} s | speed-up {ref / ours:.2f} x | "
              f"{ours / t['forward']:.1f} x forward")
    masked = t["scorecam_forwards_alone"]
    print(f"scorecam: its {n_masked} masked forwards alone take {masked:.3f} s; "
          f"overhead ratio {t['ours_scorecam'] / masked:.3f}")


if __name__ == "__main__":
    main()
