"""Figures for the report (matplotlib / seaborn), written atomically as PNG."""
from __future__ import annotations

import colorsys
import io
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scikit_posthocs as sp  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .aggregate import BOX_COLUMNS  # noqa: E402
from .data import read_dataset  # noqa: E402
from .metrics import METRICS  # noqa: E402
from .metrics.localisation import peak_coordinates  # noqa: E402
from .store import read_heatmaps  # noqa: E402
from .utils import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["dataset", "model", "method", "perturbation", "level", "metric", "mean", "ci_low", "ci_high"]
STATS_COLUMNS = ["dataset", "model", "perturbation", "level", "metric", "test", "groups", "p_adj", "mean_ranks"]
FAMILIES = ("faithfulness", "robustness", "localisation", "axioms", "sanity", "complexity")
CLEAN = ("none", 0.0)


def _pick(labels: np.ndarray, n: int) -> np.ndarray:
    """Up to n indices, round-robin over classes, first images first (deterministic)."""
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    picked = []
    for i in range(max(map(len, per_class))):
        picked += [idx[i] for idx in per_class if i < len(idx)]
    return np.array(picked[:n])


def save_figure(fig, output) -> None:
    """Write ``fig`` as a PNG (atomically) and close it."""
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def show_image(ax, image: np.ndarray, **kwargs) -> None:
    """Draw a (C, H, W) image: RGB as is, otherwise grey (the first of several modalities)."""
    img = image.transpose(1, 2, 0)
    img = img if img.shape[-1] == 3 else img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, **kwargs)


def _display_slice(mask: np.ndarray | None, first_map: np.ndarray) -> int:
    """Axial slice shown for a volume: the one with the most ground truth, else the first map's peak."""
    if mask is not None and mask.any():
        return int(mask.reshape(mask.shape[0], -1).sum(1).argmax())
    return int(np.unravel_index(np.argmax(first_map), first_map.shape)[0])


def _save_bounded(fig, output, max_px: int, max_bytes: int | None) -> None:
    """PNG or JPEG (by ``output``'s suffix) whose longer side is at most ``max_px`` and whose file is at
    most ``max_bytes``: lower JPEG quality first, then fewer pixels (the report's size budget,
    cambench.verdict)."""
    from PIL import Image

    width, height = fig.get_size_inches()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=min(110, max_px / max(width, height)), bbox_inches="tight")
    plt.close(fig)
    image = Image.open(buffer).convert("RGB")
    jpeg = Path(output).suffix.lower() in (".jpg", ".jpeg")
    scale = min(1.0, max_px / max(image.size))
    while True:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        shown = image.resize(size, Image.LANCZOS) if size != image.size else image
        for quality in (85, 75, 60, 45) if jpeg else (None,):
            data = io.BytesIO()
            if jpeg:
                shown.save(data, "JPEG", quality=quality, optimize=True)
            else:
                shown.save(data, "PNG", optimize=True)
            if max_bytes is None or data.tell() <= max_bytes:
                break
        if max_bytes is None or data.tell() <= max_bytes or min(size) <= 16:
            break
        scale *= 0.8
    with atomic_path(output) as tmp:
        tmp.write_bytes(data.getvalue())


def heatmap_gallery(dataset_path: str, heatmaps_path: str, output: str, split: str, n_images: int,
                    max_px: int = 2400, max_bytes: int | None = None) -> None:
    """Rows: images (spread over classes). Columns: the image with its ground-truth outline, then one
    overlay per method with the map's peak marked (x). Volumes show one axial slice per row (the
    one with the most ground truth, else the first method's peak); a peak on another slice is
    drawn as a hollow marker at its in-plane position. The file (PNG, or JPEG for a .jpg output) is
    at most ``max_px`` pixels on its longer side and ``max_bytes`` bytes (``_save_bounded``)."""
    ds = read_dataset(dataset_path, split)
    rows = _pick(ds.labels, n_images)
    hm = read_heatmaps(heatmaps_path, rows=rows)  # hm's row r is the dataset's image rows[r]
    methods = list(hm.maps)
    volume = ds.images.ndim == 5
    fig, axes = plt.subplots(len(rows), len(methods) + 1, figsize=(1.9 * (len(methods) + 1), 1.9 * len(rows)),
                             squeeze=False)
    for r, i in enumerate(rows):
        mask = ds.masks[i] if ds.masks is not None else None
        z = _display_slice(mask, hm.maps[methods[0]][r]) if volume and methods else None
        image = ds.images[i][:, z] if volume else ds.images[i]
        ax = axes[r, 0]
        show_image(ax, image)
        if mask is not None:
            shown = mask[z] if volume else mask
            if shown.any():
                ax.contour(shown, levels=[0.5], colors="white", linewidths=0.8)
        truth, pred = ds.class_names[ds.labels[i]], ds.class_names[hm.predictions[r]]
        ax.set_title(f"{truth} → {pred}" + (f" (z={z})" if volume else ""), fontsize=7)
        for c, m in enumerate(methods, start=1):
            ax = axes[r, c]
            heat = hm.maps[m][r]
            show_image(ax, image)
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
    _save_bounded(fig, output, max_px, max_bytes)


# --------------------------------------------------------------------------------------------
# Shared: reading the tables, metric names, colours, conditions
# --------------------------------------------------------------------------------------------

def _read_table(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """A CSV or parquet table with at least ``columns`` and at least one row (else ValueError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table not found: {path}")
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {columns}, missing {missing}")
    if table.empty:
        raise ValueError(f"{path}: the table has no rows; nothing to plot")
    table["level"] = table["level"].astype(float)
    return table


def _higher_is_better(metric: str) -> bool | None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; registered: {', '.join(METRICS.names())}")
    return METRICS.get(metric).meta.get("higher_is_better")


def _direction(metric: str) -> str:
    return {True: "↑ better", False: "↓ better", None: "no better direction"}[_higher_is_better(metric)]


def _check_metrics(metrics, table: pd.DataFrame, path, parameter: str, skip_missing: bool) -> list[str]:
    """``metrics`` as a list of registered names present in ``table``. A name absent from the whole
    table is an error, or (``skip_missing``, as the workflow passes) left out with a log line."""
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"{parameter} must be a non-empty list of metric names, got {metrics!r}")
    metrics = list(dict.fromkeys(metrics))
    for metric in metrics:
        _higher_is_better(metric)
    present = set(table["metric"])
    absent = [m for m in metrics if m not in present]
    if absent and not (skip_missing and len(absent) < len(metrics)):
        raise ValueError(f"{parameter}: metric(s) {absent} have no rows in {path}; present: {sorted(present)}")
    if absent:
        log.info("%s: %s have no rows in %s; left out", parameter, absent, path)
    return [m for m in metrics if m in present]


def _method_colours(methods) -> dict[str, tuple]:
    """One fixed colour per method (sorted names), the same in every figure drawn from one table."""
    methods = sorted(set(methods))
    if len(methods) > 20:
        return dict(zip(methods, sns.color_palette("husl", len(methods))))
    tab20 = sns.color_palette("tab20", 20)
    return dict(zip(methods, tab20[0::2] + tab20[1::2]))  # the ten strong colours first, then their light pairs


def _condition(perturbation: str, level: float) -> str:
    return "clean" if perturbation == "none" else f"{perturbation} {level:g}"


def parse_condition(condition: str) -> tuple[str, float]:
    """'clean' (or 'none') -> ('none', 0.0); 'gaussian~0.1' -> ('gaussian', 0.1), as in the file names."""
    if condition in ("clean", "none", "none~0"):
        return CLEAN
    kind, _, level = condition.partition("~")
    try:
        return kind, float(level)
    except ValueError:
        raise ValueError(f"condition must be 'clean' or '<perturbation>~<level>' (e.g. 'gaussian~0.1'), "
                         f"got {condition!r}") from None


def _at(table: pd.DataFrame, perturbation: str, level: float) -> pd.Series:
    return (table["perturbation"] == perturbation) & np.isclose(table["level"], level)


def _note(ax, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _model_rows(table: pd.DataFrame, model: str, path) -> pd.DataFrame:
    rows = table[table["model"] == model]
    if rows.empty:
        raise ValueError(f"model '{model}' has no rows in {path}; models present: {sorted(set(table['model']))}")
    return rows


# --------------------------------------------------------------------------------------------
# Robustness curves: metric against severity, per perturbation kind
# --------------------------------------------------------------------------------------------

def robustness_curves(summary_csv: str | Path, output: str | Path, metrics: list[str], model: str,
                      skip_missing: bool = False) -> None:
    """One model: rows = ``metrics``, columns = perturbation kinds; x = severity (the clean point at 0
    where the metric exists on clean images), y = mean with its 95 % CI as a band, one line per method."""
    table = _read_table(summary_csv, SUMMARY_COLUMNS)
    metrics = _check_metrics(metrics, table, summary_csv, "metrics", skip_missing)
    rows = _model_rows(table, model, summary_csv)
    kinds = sorted(set(rows["perturbation"]) - {"none"})
    if not kinds:
        raise ValueError(f"{summary_csv}: model '{model}' has no perturbed rows; robustness curves need a sweep")
    colours = _method_colours(table["method"])
    methods = sorted(set(rows["method"]))
    band_alpha = 0.2 if len(methods) <= 5 else 0.07  # many overlapping bands: keep the lines readable
    fig, axes = plt.subplots(len(metrics), len(kinds), figsize=(3.4 * len(kinds), 2.2 * len(metrics)),
                             squeeze=False, sharex="col")
    for r, metric in enumerate(metrics):
        of_metric = rows[rows["metric"] == metric]
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            curve_rows = of_metric[of_metric["perturbation"].isin(["none", kind])]
            if curve_rows.empty:
                _note(ax, f"no {metric} rows for {model}")
            levels = sorted(set(rows.loc[rows["perturbation"].isin(["none", kind]), "level"]))
            dodge = 0.012 * (max(levels) - min(levels) or 1.0)
            for i, method in enumerate(methods):
                line = curve_rows[curve_rows["method"] == method].sort_values("level")
                if line.empty:
                    continue
                x = line["level"].to_numpy()
                if len(line) == 1:  # a band needs two points: a lone point gets a CI bar, methods side by side
                    x = x + dodge * (i - (len(methods) - 1) / 2)
                    mean, low, high = line[["mean", "ci_low", "ci_high"]].iloc[0]
                    ax.errorbar(x, [mean], yerr=np.nan_to_num([[mean - low], [high - mean]]), fmt="none",
                                ecolor=colours[method], elinewidth=0.8, capsize=1.5)
                ax.plot(x, line["mean"], marker="o", markersize=3, linewidth=1.2, color=colours[method], label=method)
                ax.fill_between(x, line["ci_low"], line["ci_high"], color=colours[method], alpha=band_alpha,
                                linewidth=0)
            if not curve_rows.empty:
                ax.set_xticks(levels)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3, linewidth=0.5)
            if r == 0:
                ax.set_title(kind, fontsize=9)
            if r == len(metrics) - 1:
                ax.set_xlabel("severity (0 = clean)", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{metric}\n({_direction(metric)})", fontsize=8)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", markersize=3, label=m) for m in methods]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(f"{model}: mean and 95 % bootstrap CI against perturbation severity", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    save_figure(fig, output)


# --------------------------------------------------------------------------------------------
# Ranks from the Friedman table: oriented so that rank 1 = best
# --------------------------------------------------------------------------------------------

def oriented_ranks(friedman_df: pd.DataFrame) -> pd.DataFrame:
    """Long table (dataset, model, perturbation, level, metric, method, rank, k) of the Friedman
    table's mean ranks turned so that rank 1 = best: ``mean_ranks`` ranks the lowest value 1, so a
    higher-is-better metric's rank r becomes k + 1 - r (exact for average ranks with ties). Rows
    without ranks (no test) and metrics with no better direction (higher_is_better None) are left out."""
    missing = [c for c in ["dataset", "model", "perturbation", "level", "metric", "mean_ranks"]
               if c not in friedman_df.columns]
    if missing:
        raise ValueError(f"friedman_df: missing columns {missing}")
    rows = []
    for rec in friedman_df.itertuples(index=False):
        text = rec.mean_ranks
        if not isinstance(text, str) or not text.strip():
            continue
        higher = _higher_is_better(rec.metric)
        if higher is None:
            continue
        ranks = json.loads(text)
        k = len(ranks)
        for method, rank in ranks.items():
            rows.append({"dataset": rec.dataset, "model": rec.model, "perturbation": rec.perturbation,
                         "level": float(rec.level), "metric": rec.metric, "method": method,
                         "rank": k + 1 - rank if higher else float(rank), "k": k})
    return pd.DataFrame(rows, columns=["dataset", "model", "perturbation", "level", "metric", "method", "rank", "k"])


def _significance_matrix(posthoc: pd.DataFrame, methods: list[str]) -> tuple[pd.DataFrame, int]:
    """Square matrix of adjusted pairwise p values over ``methods`` (1 where a pair was not tested)
    and the number of pairs found."""
    matrix = pd.DataFrame(1.0, index=methods, columns=methods)
    found = 0
    for rec in posthoc.itertuples(index=False):
        a, _, b = str(rec.groups).partition(",")
        p = rec.p_adj if pd.notna(rec.p_adj) else getattr(rec, "p", np.nan)
        if a in matrix.index and b in matrix.index and pd.notna(p):
            matrix.loc[a, b] = matrix.loc[b, a] = float(p)
            found += 1
    return matrix, found


def critical_difference(friedman_csv: str | Path, posthoc_csv: str | Path, output: str | Path, metrics: list[str],
                        model: str, alpha: float = 0.05, skip_missing: bool = False) -> None:
    """One model, clean images: a critical-difference diagram per metric (scikit-posthocs), mean ranks
    from the Friedman table turned so that rank 1 = best (left), a bar joining methods whose Nemenyi
    p_adj is not below ``alpha``."""
    friedman_table = _read_table(friedman_csv, STATS_COLUMNS)
    metrics = _check_metrics(metrics, friedman_table, friedman_csv, "metrics", skip_missing)
    undirected = [m for m in metrics if _higher_is_better(m) is None]
    if undirected:
        raise ValueError(f"metrics: {undirected} have no better direction (higher_is_better None); "
                         "a critical-difference diagram needs one")
    if not Path(posthoc_csv).is_file():
        raise FileNotFoundError(f"post-hoc table not found: {posthoc_csv}")
    posthoc = pd.read_csv(posthoc_csv)  # may have no rows: then no pair is drawn as tested
    missing = [c for c in STATS_COLUMNS if c not in posthoc.columns]
    if missing:
        raise ValueError(f"{posthoc_csv}: expected columns {STATS_COLUMNS}, missing {missing}")
    posthoc["level"] = posthoc["level"].astype(float)
    rows = _model_rows(friedman_table, model, friedman_csv)
    clean = rows[_at(rows, *CLEAN)]
    ranks = oriented_ranks(clean)
    nemenyi = posthoc[(posthoc["model"] == model) & _at(posthoc, *CLEAN) & (posthoc["test"] == "nemenyi")]
    colours = _method_colours(m for groups in friedman_table["groups"].dropna() for m in str(groups).split(","))
    heights = [0.9 + 0.3 * math.ceil(max(len(ranks[ranks["metric"] == m]), 2) / 2) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, metric in zip(axes[:, 0], metrics):
        test = clean[clean["metric"] == metric]
        metric_ranks = ranks[ranks["metric"] == metric].set_index("method")["rank"].sort_values()
        if test.empty or metric_ranks.empty:
            notes = test["note"].dropna() if "note" in test else pd.Series(dtype=str)
            why = notes.iloc[0] if len(notes) else f"no Friedman row for {model}"
            ax.set_title(f"{metric} ({_direction(metric)})", fontsize=9)
            _note(ax, f"no ranks: {why}")
            continue
        methods = list(metric_ranks.index)
        matrix, found = _significance_matrix(nemenyi[nemenyi["metric"] == metric], methods)
        sp.critical_difference_diagram(metric_ranks, matrix, ax=ax, alpha=alpha,
                                       color_palette={m: colours[m] for m in methods},
                                       label_props={"fontsize": 7}, text_h_margin=0.3)
        ax.set_xlim(0.5, max(len(methods), 2) + 0.5)
        ax.tick_params(labelsize=7)
        rec = test.iloc[0]
        # p_adj of the friedman table: Holm over every Friedman row of the table (its family 'table')
        tested = (f"Friedman p (Holm, whole table) = {rec['p_adj']:.2g}" if pd.notna(rec["p_adj"])
                  else "Friedman: no test")
        if "effect_size" in test and pd.notna(rec.get("effect_size")):
            tested += f", Kendall's W = {rec['effect_size']:.2f}"
        if not found:
            tested += "; no Nemenyi rows, pairs not tested"
        ax.set_title(f"{metric} ({_direction(metric)}): {tested}, n = {rec.get('n', '?')}", fontsize=9, pad=18)
    fig.suptitle(f"{model}, clean images: mean rank (1 = best, left); bars join methods the Nemenyi test "
                 f"does not separate (Nemenyi p, family-wise over the metric's pairs, ≥ {alpha:g})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # room for the suptitle
    save_figure(fig, output)


def rank_heatmap(friedman_csv: str | Path, output: str | Path, condition: str = "clean") -> None:
    """Method x metric heatmap of mean ranks (1 = best), annotated, one panel per model, for one
    condition ('clean' or '<perturbation>~<level>'). Metrics without a better direction are left out;
    methods are sorted by their mean rank over the metrics, metrics by family."""
    perturbation, level = parse_condition(condition)
    table = _read_table(friedman_csv, STATS_COLUMNS)
    at = table[_at(table, perturbation, level)]
    if at.empty:
        present = sorted({_condition(p, v) for p, v in zip(table["perturbation"], table["level"])})
        raise ValueError(f"{friedman_csv}: no rows for condition {condition!r}; conditions present: {present}")
    ranks = oriented_ranks(at)
    models = list(dict.fromkeys(zip(at["dataset"], at["model"])))
    family_order = {f: i for i, f in enumerate(FAMILIES)}
    panels = []
    for dataset, model in models:
        of_model = ranks[(ranks["dataset"] == dataset) & (ranks["model"] == model)]
        grid = of_model.pivot_table(index="method", columns="metric", values="rank", aggfunc="first")
        if not grid.empty:
            metric_order = sorted(grid.columns,
                                  key=lambda m: (family_order.get(METRICS.get(m).meta.get("family"), 99), m))
            grid = grid.loc[grid.mean(axis=1).sort_values().index, metric_order]
        panels.append((dataset, model, grid, of_model["k"].max() if not of_model.empty else 0))
    width = max([0.42 * grid.shape[1] + 3 for *_, grid, _ in panels] + [6])
    heights = [0.32 * max(grid.shape[0], 3) + 1.6 if not grid.empty else 0.8 for *_, grid, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (dataset, model, grid, k) in zip(axes[:, 0], panels):
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        if grid.empty:
            notes = at.loc[at["model"] == model, "note"].dropna() if "note" in at else pd.Series(dtype=str)
            _note(ax, "no ranks" + (f": {notes.iloc[0]}" if len(notes) else ""))
            continue
        sns.heatmap(grid, ax=ax, annot=True, fmt=".1f", annot_kws={"fontsize": 6}, cmap="RdYlGn_r", vmin=1,
                    vmax=max(k, 2), linewidths=0.3, linecolor="white",
                    cbar_kws={"shrink": 0.8})
        colourbar = ax.collections[0].colorbar
        colourbar.ax.invert_yaxis()  # rank 1 (best) at the top
        colourbar.set_label("mean rank (1 = best)", fontsize=8)
        colourbar.ax.tick_params(labelsize=7)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
        ax.set_xticklabels(ax.get_xticklabels(), rotation=90)
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    fig.suptitle(f"Mean Friedman rank per method and metric, {_condition(perturbation, level)} "
                 "(1 = best; images as blocks)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, output)


# --------------------------------------------------------------------------------------------
# Consistency against responsiveness
# --------------------------------------------------------------------------------------------

_LABEL_OFFSETS = [(5, 4), (-5, 4), (5, -8), (-5, -8), (0, 8), (0, -11), (10, -2), (-10, -2)]  # points


def _label_points(ax, points: list[tuple[str, float, float]], colours: dict) -> None:
    """Name each point, choosing per point the offset whose label anchor lies farthest (in screen space)
    from the other points and the labels placed so far: a cheap guard against labels on top of each other."""
    to_screen = ax.transData.transform
    scale = ax.figure.dpi / 72
    taken = [to_screen((x, y)) for _, x, y in points]
    for method, x, y in sorted(points, key=lambda p: (-p[2], p[1])):
        anchor = to_screen((x, y))
        candidates = [anchor + scale * np.array(o) for o in _LABEL_OFFSETS]
        others = np.array([t for t in taken if not np.allclose(t, anchor)] or [anchor + 1e6])
        best = max(range(len(candidates)), key=lambda i: np.linalg.norm(others - candidates[i], axis=1).min())
        dx, dy = _LABEL_OFFSETS[best]
        ax.annotate(method, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=6.5,
                    ha="left" if dx > 0 else "right" if dx < 0 else "center", color="0.1",
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="white")],
                    bbox=None, zorder=5)
        taken.append(candidates[best])


def consistency_responsiveness_plane(summary_csv: str | Path, output: str | Path) -> None:
    """x = consistency, y = responsiveness (both higher = better: top right is robust and responsive),
    one point per method with its 95 % CI in both directions, one panel per (model, perturbation, level).
    A method appears where both exist (responsiveness needs a changed prediction, consistency an unchanged one)."""
    table = _read_table(summary_csv, SUMMARY_COLUMNS)
    pair = ["consistency", "responsiveness"]
    rows = table[table["metric"].isin(pair) & (table["perturbation"] != "none")]
    if rows.empty:
        raise ValueError(f"{summary_csv}: no consistency or responsiveness rows on perturbed images")
    colours = _method_colours(table["method"])
    panels = sorted(set(zip(rows["dataset"], rows["model"], rows["perturbation"], rows["level"])))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    side = 4.2 if rows["method"].nunique() <= 6 else 5.6   # room for the labels of many methods
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols, side * 0.92 * nrows), squeeze=False)
    for ax, (dataset, model, kind, level) in zip(axes.flat, panels):
        sub = rows[(rows["dataset"] == dataset) & (rows["model"] == model) & _at(rows, kind, level)]
        wide = sub.pivot_table(index="method", columns="metric", values=["mean", "ci_low", "ci_high"], aggfunc="first")
        ax.set_title(f"{model}: {_condition(kind, level)}", fontsize=9)
        both = wide.dropna(subset=[("mean", m) for m in pair if ("mean", m) in wide.columns]) \
            if all(("mean", m) in wide.columns for m in pair) else wide.iloc[:0]
        if both.empty:
            lacking = [m for m in pair if m not in set(sub["metric"])]
            _note(ax, f"no method has both metrics here (no rows of {', '.join(lacking) or 'both for one method'})")
            continue
        points = []
        for method, rec in both.iterrows():
            x, y = rec[("mean", "consistency")], rec[("mean", "responsiveness")]
            xerr = [[max(x - rec[("ci_low", "consistency")], 0)], [max(rec[("ci_high", "consistency")] - x, 0)]]
            yerr = [[max(y - rec[("ci_low", "responsiveness")], 0)], [max(rec[("ci_high", "responsiveness")] - y, 0)]]
            ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt="o", markersize=4,
                        color=colours[method], elinewidth=0.8, capsize=2, alpha=0.9)
            points.append((method, x, y))
        ax.margins(0.15)
        ax.autoscale_view()
        _label_points(ax, points, colours)
        ax.set_xlabel("consistency (↑ better)", fontsize=8)
        ax.set_ylabel("responsiveness (↑ better)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, linewidth=0.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Consistency (unchanged predictions) against responsiveness (changed predictions): "
                 "mean and 95 % CI", fontsize=10)
    fig.tight_layout()
    save_figure(fig, output)


# --------------------------------------------------------------------------------------------
# Per-image distributions, one figure per metric family
# --------------------------------------------------------------------------------------------

def _dodged_box(n_slots: int, slot: int, dodge: bool, width: float = 0.8) -> tuple[float, float]:
    """Offset from the row's centre and width of the box in ``slot`` of ``n_slots`` (seaborn's dodge:
    ``width`` split evenly among the hue levels, in hue order)."""
    if not dodge:
        return 0.0, width
    box = width / n_slots
    return box * slot + box / 2 - width / 2, box


def metric_distributions(box_stats: str | Path, output: str | Path, family: str) -> None:
    """One metric family: a grid of small panels (one per metric of the family in the table), methods on
    the y axis, per-image values on x, one box per condition (clean and each perturbation level).

    ``box_stats`` is the box-statistics table of ``cambench.aggregate`` (quartiles, whiskers, mean and
    outliers per group), so the per-image values are never loaded; the boxes are drawn as seaborn's
    boxplot would draw them from the values (its own ``boxplot_stats`` + ``Axes.bxp``), dodged, coloured and
    outlined the same way. Outliers shown are at most ``aggregate.MAX_FLIERS`` per box."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}")
    table = _read_table(box_stats, BOX_COLUMNS)
    family_metrics = [m for m in METRICS.names() if METRICS.get(m).meta.get("family") == family]
    rows = table[table["metric"].isin(family_metrics)].copy()
    conditions = sorted({_condition(p, v) for p, v in set(zip(table["perturbation"], table["level"]))},
                        key=lambda c: (c != "clean", c))
    metrics = [m for m in family_metrics if m in set(rows["metric"])]
    if not metrics:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        _note(ax, f"no {family} metric in {Path(box_stats).name}")
        save_figure(fig, output)
        return
    rows["condition"] = [_condition(p, v) for p, v in zip(rows["perturbation"], rows["level"])]
    # With several models a method is shown per model (its values differ between models).
    several = table[["dataset", "model"]].drop_duplicates().shape[0] > 1
    rows["row"] = (rows["model"] + ": " + rows["method"]) if several else rows["method"]
    order = sorted(set(rows["row"]))
    position = {row: i for i, row in enumerate(order)}
    palette = dict(zip(conditions, sns.color_palette("colorblind", len(conditions))))
    # seaborn's filled boxes: faces at saturation 0.75, lines grey at 0.6 x the palette's lowest lightness
    faces = {c: sns.desaturate(colour, 0.75) for c, colour in palette.items()}
    grey = 0.6 * min(colorsys.rgb_to_hls(*colour)[1] for colour in palette.values())
    line = {"color": (grey, grey, grey), "linewidth": 0.6}
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols + 1.5, (0.2 * len(order) * max(len(conditions), 2) / 2
                                                                         + 0.9) * nrows), squeeze=False)
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics)):
        sub = rows[rows["metric"] == metric]
        present = [c for c in conditions if c in set(sub["condition"])]
        # boxes are dodged when some row has several conditions (seaborn's dodge="auto")
        dodge = len(sub[["row", "condition"]].drop_duplicates()) != sub["row"].nunique()
        for slot, condition in enumerate(present):
            # one box per row with at least one finite value, in y order (a group of NaN only draws nothing)
            boxes = sub[(sub["condition"] == condition) & (sub["n"] > 0)]
            boxes = boxes.iloc[np.argsort([position[r] for r in boxes["row"]], kind="stable")]
            if boxes.empty:
                continue
            offset, width = _dodged_box(len(present), slot, dodge)
            stats = [dict(mean=b.mean, med=b.med, q1=b.q1, q3=b.q3, whislo=b.whislo, whishi=b.whishi,
                          fliers=np.asarray(b.fliers, dtype=float)) for b in boxes.itertuples(index=False)]
            ax.bxp(stats, positions=[position[r] + offset for r in boxes["row"]], widths=width,
                   capwidths=0.5 * width, orientation="horizontal", patch_artist=True, manage_ticks=False,
                   showmeans=True,
                   boxprops={"facecolor": faces[condition], "edgecolor": line["color"], "linewidth": 0.6},
                   medianprops={**line, "solid_capstyle": "butt"}, whiskerprops={**line, "solid_capstyle": "butt"},
                   capprops=line, flierprops={"markeredgecolor": line["color"], "markersize": 1},
                   # the mean as a small diamond: for 0/1 metrics (pointing game, flips) it is the rate
                   meanprops={"marker": "D", "markersize": 2.5, "markerfacecolor": "white",
                              "markeredgecolor": "black", "markeredgewidth": 0.5})
        ax.set_yticks(range(len(order)), order)
        ax.set_ylim(len(order) - 0.5, -0.5)   # first row on top
        ax.set_title(f"{metric} ({_direction(metric)})", fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=6)
        ax.grid(axis="x", alpha=0.3, linewidth=0.5)
        if i % ncols:
            ax.set_yticklabels([])
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    handles = [Patch(color=palette[c], label=c) for c in conditions]
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(conditions), fontsize=8,
               frameon=False, title=f"{family}: per-image values per method and condition",
               title_fontproperties={"size": 10})
    save_figure(fig, output)
