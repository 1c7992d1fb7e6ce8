"""Figures for the report (matplotlib / seaborn), written atomically as PNG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from .data import read_dataset  # noqa: E402
from .metrics.localisation import peak_coordinates  # noqa: E402
from .store import read_heatmaps  # noqa: E402
from .utils import atomic_path  # noqa: E402


def _pick(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices, round-robin over classes, first images first (deterministic)."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked = []
    for i in range(max(map(len, per_class))):
        picked += [idx[i] for idx in per_class if i < len(idx)]
    return np.array(picked[:n])


def _save(fig, output) -> None:
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _display_slice(mask: np.ndarray | None, first_map: np.ndarray) -> int:
    """Axial slice shown for a volume: the one with the most ground truth, else the first map's peak."""
    if mask is not None and mask.any():
        return int(mask.reshape(mask.shape[0], -1).sum(1).argmax())
    return int(np.unravel_index(np.argmax(first_map), first_map.shape)[0])


def heatmap_gallery(dataset_path: str, heatmaps_path: str, output: str, split: str, n_images: int) -> None:
    """Rows: images (spread over classes). Columns: the image with its ground-truth outline, then one
    overlay per method with the map's peak marked (x). Volumes show one axial slice per row (the
    one with the most ground truth, else the first method's peak); a peak on another slice is
    drawn as a hollow marker at its in-plane position."""
    ds = read_dataset(dataset_path, split)
    hm = read_heatmaps(heatmaps_path)
    rows = _pick(ds.labels, n_images)
    methods = list(hm.maps)
    volume = ds.images.ndim == 5
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(1.9 * (len(methods) + 1), 1.9 * len(rows)),
                             squeeze=False)
    for r, i in enumerate(rows):
        mask = ds.masks[i] if ds.masks is not None else None
        z = _display_slice(mask, hm.maps[methods[0]][i]) if volume and methods else None
        image = ds.images[i][:, z] if volume else ds.images[i]
        img = image.transpose(1, 2, 0)
        img = img if img.shape[-1] == 3 else img[..., 0]  # grey, or the first of several modalities
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        if mask is not None:
            shown = mask[z] if volume else mask
            if shown.any():
                ax.contour(shown, levels=[0.5], colors="white", linewidths=0.8)
        truth, pred = ds.class_names[ds.labels[i]], ds.class_names[hm.predictions[i]]
        ax.set_title(f"{truth} → {pred}" + (f" (z={z})" if volume else ""), fontsize=7)
        for c, m in enumerate(methods, start=1):
            ax = axes[r, c]
            heat = hm.maps[m][i]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.imshow(heat[z] if volume else heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            peak = peak_coordinates(torch.from_numpy(heat[None]).float())[0].tolist()
            on_slice = not volume or peak[0] == z
            ax.plot(peak[-1], peak[-2], marker="x" if on_slice else "o", color="white", markersize=6,
                    mew=2, fillstyle="full" if on_slice else "none")
            if r == 0:
                ax.set_title(m, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    level = f"{hm.attrs.get('perturbation')} {hm.attrs.get('level')}"
    fig.suptitle(f"{hm.attrs.get('model', '')}: heatmaps on {split} images ({level})", fontsize=9)
    fig.tight_layout()
    _save(fig, output)


def metric_distributions(metrics_parquet: str, output: str) -> None:
    """Per metric: distribution of per-image values per method, one box per perturbation level."""
    table = pd.read_parquet(metrics_parquet)
    table["condition"] = np.where(table["perturbation"] == "none", "clean",
                                  table["perturbation"] + " " + table["level"].map("{:g}".format))
    order = sorted(table["condition"].unique(), key=lambda c: (c != "clean", c))
    metrics = sorted(table["metric"].unique())
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.8 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        sub = table[table["metric"] == metric]
        sns.boxplot(data=sub, x="method", y="value", hue="condition", hue_order=[c for c in order if c in
                    set(sub["condition"])], ax=ax, fliersize=1.5, linewidth=0.8)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("")
        ax.legend(fontsize=7, title=None, loc="best")
    fig.tight_layout()
    _save(fig, output)
