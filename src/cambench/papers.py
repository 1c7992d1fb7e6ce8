"""The seed papers' figure and table types, regenerated from this run's tables (target paper_figures).

Each paper has one tidy table, ``results/papers/<key>.csv``, with the same columns: our values
(``source = "cambench"``, with the data set and model they come from, 95 % bootstrap CIs where a
mean is shown) next to the paper's own numbers where ``docs/papers.md`` could check them
(``source = "paper"``, with the confidence tag in ``tag``). A paper without checked numbers gets
its checked qualitative claim as a row without a value. Stand-in values reproduce no paper number:
every cambench row says which data set it is from.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .aggregate import bootstrap_mean_ci
from .tables import METRIC_COLUMNS, partitions, read_block
from .utils import atomic_path

PAPER_COLUMNS = ["paper", "source", "tag", "dataset", "model", "method", "perturbation", "level", "quantity",
                 "value", "ci_low", "ci_high", "n", "note"]


@dataclass(frozen=True)
class Paper:
    key: str
    citation: str
    what: str                                    # the figure/table type its protocol defines
    formats: tuple[str, ...] | None = None       # dataset formats of its domain (None: any data set)
    methods: tuple[str, ...] = ()                # methods it compares (those configured are used; () = all)
    metrics: tuple[str, ...] = ()                # metrics the table reads
    reference: tuple[dict, ...] = field(default=())  # the paper's numbers / claims (docs/papers.md)


PAPERS: dict[str, Paper] = {p.key: p for p in [
    Paper("selvaraju2017_gradcam", "Selvaraju et al., Grad-CAM (ICCV 2017 / IJCV 2020)",
          "weakly supervised localisation error (15 % threshold, largest component, box IoU >= 0.5) and "
          "pointing game", None, ("gradcam", "cam", "gradcampp"), ("box_iou", "pointing_game"),
          tuple({"quantity": q, "value": v, "method": "gradcam", "dataset": "ILSVRC-15 val", "model": m,
                 "tag": "quoted via a reproduction report, not re-checked against the paper",
                 "note": "error in %"}
                for m, row in {"VGG-16": (56.51, 46.41, 30.38, 10.89), "AlexNet": (68.3, 56.6, 44.2, 20.8),
                               "GoogLeNet": (60.09, 49.34, 31.9, 11.3)}.items()
                for q, v in zip(("localisation_error_top1", "localisation_error_top5", "classification_error_top1",
                                 "classification_error_top5"), row))),
    Paper("fu2020_xgradcam", "Fu et al., Axiom-based Grad-CAM / XGrad-CAM (BMVC 2020)",
          "axiom table: conservation and sensitivity residuals per method", None,
          ("gradcam", "gradcampp", "ablationcam", "xgradcam"),
          ("conservation_residual", "sensitivity_residual", "sensitivity_correlation"),
          ({"quantity": "claim", "tag": "checked-paper (abstract)",
            "note": "XGrad-CAM satisfies Sensitivity and Conservation better than Grad-CAM; no number checked"},)),
    Paper("zhang2025_finercam", "Zhang et al., Finer-CAM (CVPR 2025)",
          "relative confidence drop after masking the top 5 % pixels (RD@5 %), Finer-CAM vs its base", None,
          ("finercam",), ("relative_drop",),
          ({"quantity": "claim", "tag": "checked-paper (abstract)",
            "note": "masking the top 5 % of a Finer-CAM map gives a larger relative confidence drop than the "
                    "baselines; per-data-set values not confirmed"},)),
    Paper("kaczmarek2023_metacam", "Kaczmarek et al., MetaCAM (arXiv 2307.16863)",
          "ROAD (combined) of the component CAMs and of MetaCAM, by ensemble size, and the CRE", None,
          ("metacam",), ("road_combined",),
          ({"quantity": "road_combined", "method": "metacam", "value": 0.393, "tag": "checked-paper (abstract)",
            "note": "one example; ROADCombined scale is our reading"},
           {"quantity": "road_combined_min", "method": "components (11 CAMs)", "value": -0.101,
            "tag": "checked-paper (abstract)", "note": "range of the 11 individual CAMs in that example"},
           {"quantity": "road_combined_max", "method": "components (11 CAMs)", "value": 0.172,
            "tag": "checked-paper (abstract)", "note": "range of the 11 individual CAMs in that example"})),
    Paper("sarkar2025_noise_robustness", "Sarkar et al., Assessing the Noise Robustness of CAMs (IVC 2025)",
          "consistency, responsiveness, robustness and flip rate per method x noise x severity, with tests",
          None, ("gradcam", "gradcampp", "xgradcam", "ablationcam", "hirescam", "eigencam"),
          ("consistency", "responsiveness", "noise_robustness", "flip_rate"),
          ({"quantity": "claim", "tag": "checked-paper (abstract)",
            "note": "stability differs across CAM methods, noise types and data sets; no number published"},)),
    Paper("bird2023_cifake", "Bird & Lotfi, CIFAKE (arXiv 2303.14126)",
          "Grad-CAM on REAL vs FAKE images: where the maps look (object vs background artefact), accuracy",
          ("cifake",), ("gradcam",), ("pointing_game", "energy_pointing_game"),
          ({"quantity": "test_accuracy", "value": 0.9298, "method": "-", "dataset": "CIFAKE",
            "model": "best of 36 CNNs", "tag": "checked-paper"},
           {"quantity": "claim", "tag": "checked-paper (abstract)",
            "note": "Grad-CAM shows the model attends to small imperfections in the background, not the object"})),
    Paper("chen2023_amecam", "Chen et al., AME-CAM (MICCAI 2023)",
          "Dice, IoU and HD95 (mean +- std) of the thresholded maps against the tumour masks", ("brats",),
          ("amecam",), ("dice", "iou", "hd95"),
          ({"quantity": "claim", "tag": "checked-paper (abstract)",
            "note": "AME-CAM outperforms CAM and WSSS methods on BraTS 2021; per-modality numbers not confirmed"},)),
    Paper("mishra2022_street", "Mishra et al., Accident-prone features in urban scenes (arXiv 2202.12788 v2)",
          "ablation measure: area of the CAM-extracted region, drop of P(hotspot), flip rate", ("street",),
          (), ("ablation_area", "ablation_drop", "ablation_flip"),
          ({"quantity": "ablation_area", "value": 0.0961, "tag": "checked-paper (v2 abstract)",
            "note": "mean area of the AP-feature regions (9.61 %)"},
           {"quantity": "ablation_drop", "value": 0.218, "tag": "checked-paper (v2 abstract)",
            "note": "up to 21.8 % more likely non-hotspot after ablation (our reading: best method's mean)"},
           {"quantity": "test_accuracy", "value": 0.92, "tag": "checked-paper (v2 abstract)",
            "note": "up to 92 %"})),
]}


def check_paper_keys(keys) -> list[str]:
    unknown = [k for k in keys if k not in PAPERS]
    if unknown:
        raise ValueError(f"unknown paper(s) {unknown}; available: {', '.join(PAPERS)}")
    return list(keys)


def paper_models(paper: str, models: dict[str, dict], formats: dict[str, str], methods: dict[str, list[str]],
                 chosen: list[str] | None = None) -> list[str]:
    """Models a paper's table uses: ``chosen`` (config), else those of the paper's domain that run at
    least one of its methods. ``formats`` maps dataset -> format; ``methods`` model -> method labels."""
    entry = PAPERS[paper]
    if chosen:
        unknown = [m for m in chosen if m not in models]
        if unknown:
            raise ValueError(f"papers.models.{paper}: unknown model(s) {unknown}; configured: {', '.join(models)}")
        return list(chosen)
    out = []
    for name, spec in models.items():
        if entry.formats is not None and formats.get(spec["dataset"]) not in entry.formats:
            continue
        if entry.methods and not set(entry.methods) & set(methods.get(name, [])):
            continue
        out.append(name)
    return out


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------

def _rows_from_summary(paper: Paper, summary: pd.DataFrame, models: list[str], methods: tuple[str, ...] | None = None,
                       perturbations: tuple[str, ...] | None = None, note: str = "") -> list[dict]:
    sel = summary[summary["model"].isin(models) & summary["metric"].isin(paper.metrics)]
    if methods:
        sel = sel[sel["method"].isin(methods)]
    if perturbations is not None:
        sel = sel[sel["perturbation"].isin(perturbations)]
    return [{"paper": paper.key, "source": "cambench", "tag": "ours", "dataset": r.dataset, "model": r.model,
             "method": r.method, "perturbation": r.perturbation, "level": r.level, "quantity": r.metric,
             "value": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "note": note}
            for r in sel.itertuples()]


def _reference_rows(paper: Paper) -> list[dict]:
    return [{"paper": paper.key, "source": "paper", "tag": ref.get("tag", ""), "dataset": ref.get("dataset", ""),
             "model": ref.get("model", ""), "method": ref.get("method", ""), "perturbation": "", "level": np.nan,
             "quantity": ref["quantity"], "value": ref.get("value", np.nan), "ci_low": np.nan, "ci_high": np.nan,
             "n": np.nan, "note": ref.get("note", "")} for ref in paper.reference]


def _bootstrap_row(paper: Paper, values: np.ndarray, n_boot: int, seed: int, **fields) -> dict:
    rng = np.random.default_rng(seed)
    point, lo, hi = bootstrap_mean_ci(values.astype(np.float64), None, n_boot, rng) if len(values) else (np.nan,) * 3
    return {"paper": paper.key, "source": "cambench", "tag": "ours", "perturbation": "none", "level": 0.0,
            "value": point, "ci_low": lo, "ci_high": hi, "n": len(values), "note": "", **fields}


def _clean(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["perturbation"] == "none"]


GROUND_TRUTHS = {"boxes": "the annotated boxes of the label class (best IoU over them)",
                 "mask_bbox": "the mask's bounding box"}


def _ground_truth(params: pd.Series) -> str:
    """Which ground truth box_iou compared with, from the table's ``params`` JSON (tables from before
    gt_box existed used the mask's bounding box)."""
    used = sorted({json.loads(p).get("gt_box", "mask_bbox") for p in params})
    return " and ".join(GROUND_TRUTHS.get(g, f"gt_box {g!r}") for g in used)


def gradcam_localisation(paper: Paper, summary, table, models, n_boot, seed,
                         box_iou_threshold: float = 0.5) -> list[dict]:
    """Grad-CAM's ILSVRC errors (docs/papers.md §1), in %, per method, beside the pointing game:

    - localisation error top-1 = 100 (1 - mean(prediction == label and box IoU >= 0.5));
    - localisation error top-5 = 100 (1 - mean(label_rank <= 5 and box IoU >= 0.5)): the paper boxes
      the map of each of the top-5 classes, and only the label's can be right, so this needs maps of
      the label (every row's target == label, cam.class_source gt); otherwise the row is left out;
    - classification error top-1 / top-5 = 100 (1 - mean(prediction == label)) / (label_rank <= 5).

    Rows without a label rank (metric tables from before it was recorded) give no top-5 rows.
    Each note says which ground truth the IoU was measured against.
    """
    rows = _rows_from_summary(paper, summary, models, paper.methods, ("none",))
    rows = [r for r in rows if r["quantity"] == "pointing_game"]
    boxes = _clean(table)
    boxes = boxes[(boxes["metric"] == "box_iou") & boxes["model"].isin(models)]
    for (dataset, model, method), g in boxes.groupby(["dataset", "model", "method"]):
        if paper.methods and method not in paper.methods:
            continue
        correct = (g["prediction"] == g["label"]).to_numpy()
        hit = g["value"].to_numpy() >= box_iou_threshold
        values = {"localisation_error_top1": correct & hit, "classification_error_top1": correct}
        note = f"error in %; box IoU >= {box_iou_threshold} with {_ground_truth(g['params'])}"
        if "label_rank" not in g or g["label_rank"].isna().any():
            note += "; no top-5 errors: the metric table has no label ranks (recompute the heatmaps)"
        else:
            top5 = (g["label_rank"] <= 5).to_numpy(dtype=bool)
            values["classification_error_top5"] = top5
            if (g["target"] == g["label"]).all():
                values["localisation_error_top5"] = top5 & hit
            else:
                note += ("; no top-5 localisation error: the maps explain the predicted class, not the label "
                         "(it needs cam.class_source: gt)")
        for quantity in ("localisation_error_top1", "localisation_error_top5", "classification_error_top1",
                         "classification_error_top5"):
            if quantity in values:
                row = _bootstrap_row(paper, 100 * (1 - values[quantity]), n_boot, seed, dataset=dataset, model=model,
                                     method=method, quantity=quantity)
                row["note"] = note
                rows.append(row)
    return rows


def ensemble_rows(paper: Paper, ensembles: dict[str, pd.DataFrame]) -> list[dict]:
    """MetaCAM by ensemble size (mean, min, max over the subsets of each size) and the CRE per component."""
    rows = []
    for model, frame in ensembles.items():
        dataset = frame["dataset"].iloc[0]
        subsets = frame[frame["kind"] == "subset"]
        for size, g in subsets.groupby("size"):
            for stat in ("mean", "min", "max"):
                rows.append({"paper": paper.key, "source": "cambench", "tag": "ours", "dataset": dataset,
                             "model": model, "method": f"metacam, {int(size)} components", "perturbation": "none",
                             "level": 0.0, "quantity": f"road_combined_{stat}_over_subsets",
                             "value": float(getattr(g["value"], stat)()), "ci_low": np.nan, "ci_high": np.nan,
                             "n": len(g), "note": "over the subsets of this size"})
        for r in frame[frame["kind"] == "cre"].itertuples():
            rows.append({"paper": paper.key, "source": "cambench", "tag": "ours (CRE is our reading)",
                         "dataset": dataset, "model": model, "method": r.subset, "perturbation": "none", "level": 0.0,
                         "quantity": "cumulative_residual_effect", "value": r.value, "ci_low": np.nan,
                         "ci_high": np.nan, "n": np.nan, "note": "residual mode"})
    return rows


def _test_rows(paper: Paper, stats_tables: dict[str, pd.DataFrame], models: list[str],
               pairs: set | None = None) -> list[dict]:
    """The statistics tables' rows for the paper's metrics and models (Friedman, post-hoc, Kruskal)."""
    rows = []
    for name, frame in stats_tables.items():
        if frame is None or frame.empty:
            continue
        sel = frame[frame["metric"].isin(paper.metrics)]
        if "model" in sel and name != "kruskal":
            sel = sel[sel["model"].isin(models)]
        if pairs is not None and name == "posthoc":
            sel = sel[sel["groups"].isin(pairs)]
        for r in sel.to_dict("records"):
            rows.append({"paper": paper.key, "source": "cambench", "tag": "ours (test)",
                         "dataset": r.get("dataset", ""), "model": r.get("model", ""),
                         "method": r.get("method", r.get("groups", "")), "perturbation": r.get("perturbation", ""),
                         "level": r.get("level", np.nan), "quantity": f"{r['test']}: {r['metric']}",
                         "value": r.get("statistic", np.nan), "ci_low": np.nan, "ci_high": np.nan,
                         "n": r.get("n", np.nan),
                         "note": f"groups {r.get('groups', '')}; {r.get('design', '')} design; p = "
                                 f"{r.get('p', np.nan):.3g}, Holm p = {r.get('p_adj', np.nan):.3g} (family "
                                 f"{r.get('family', '')}), Holm p over the whole table = "
                                 f"{r.get('p_adj_table', np.nan):.3g}; {r.get('effect_name', '')} = "
                                 f"{r.get('effect_size', np.nan):.3g}"})
    return rows


def _finer_pairs(methods_config: dict[str, dict]) -> tuple[tuple[str, ...], set]:
    """Finer-CAM labels, their base methods, and the "a,b" post-hoc pairs comparing each with its base."""
    finer, pairs = [], set()
    for label, params in methods_config.items():
        params = params or {}
        if params.get("method", label) == "finercam":
            base = params.get("base", "gradcam")
            finer += [label, base]
            pairs.add(",".join(sorted((label, base))))
    return tuple(dict.fromkeys(finer)), pairs


def paper_table(key: str, *, summary: pd.DataFrame, table: pd.DataFrame, stats_tables: dict[str, pd.DataFrame],
                models: list[str], methods_config: dict[str, dict], ensembles: dict[str, pd.DataFrame] | None = None,
                n_boot: int = 2000, seed: int = 0, present: set | None = None) -> pd.DataFrame:
    """The tidy table of one paper (see the module docstring). ``table`` needs the clean rows only;
    ``present``: the metrics the models' tables hold at any level (default: those in ``table``)."""
    paper = PAPERS[key]
    if present is None:
        present = set(table.loc[table["model"].isin(models), "metric"])
    if not present & set(paper.metrics) and not (key == "kaczmarek2023_metacam" and ensembles):
        raise ValueError(f"paper '{key}': the metric tables hold none of {list(paper.metrics)} for models {models} "
                         f"(add them to metrics.compute)")
    rows = _reference_rows(paper)
    if key == "selvaraju2017_gradcam":
        rows += gradcam_localisation(paper, summary, table, models, n_boot, seed)
    elif key == "zhang2025_finercam":
        methods, pairs = _finer_pairs(methods_config)
        rows += _rows_from_summary(paper, summary, models, methods or None, ("none",))
        rows += _test_rows(paper, {"posthoc": stats_tables.get("posthoc")}, models, pairs)
    elif key == "kaczmarek2023_metacam":
        rows += _rows_from_summary(paper, summary, models, None, ("none",))
        rows += ensemble_rows(paper, ensembles or {})
    elif key == "sarkar2025_noise_robustness":
        rows += _rows_from_summary(paper, summary, models, paper.methods)
        rows += _test_rows(paper, {k: stats_tables.get(k) for k in ("friedman", "kruskal")}, models)
    elif key == "bird2023_cifake":
        rows += _rows_from_summary(paper, summary, models, paper.methods, ("none",),
                                   note="masks mark the stand-in's background artefact (FAKE images only)")
        rows += _accuracy_rows(paper, table, models, n_boot, seed)
    elif key == "mishra2022_street":
        rows += _rows_from_summary(paper, summary, models, None, ("none",))
        rows += _accuracy_rows(paper, table, models, n_boot, seed)
    elif key == "chen2023_amecam":
        rows += _mean_std_rows(paper, table, models)
    else:  # fu2020_xgradcam
        rows += _rows_from_summary(paper, summary, models, None, ("none",))
    return pd.DataFrame(rows, columns=PAPER_COLUMNS)


def _accuracy_rows(paper: Paper, table: pd.DataFrame, models: list[str], n_boot: int, seed: int) -> list[dict]:
    rows = []
    clean = _clean(table)
    clean = clean[clean["model"].isin(models)].drop_duplicates(["dataset", "model", "image_id"])
    for (dataset, model), g in clean.groupby(["dataset", "model"]):
        rows.append(_bootstrap_row(paper, (g["prediction"] == g["label"]).to_numpy(float), n_boot, seed,
                                   dataset=dataset, model=model, method="-", quantity="test_accuracy"))
    return rows


def _mean_std_rows(paper: Paper, table: pd.DataFrame, models: list[str]) -> list[dict]:
    """AME-CAM reports mean +- std (not a CI): value = mean, ci_low/ci_high = mean -+ std."""
    sel = _clean(table)
    sel = sel[sel["model"].isin(models) & sel["metric"].isin(paper.metrics)]
    rows = []
    for (dataset, model, method, metric), g in sel.groupby(["dataset", "model", "method", "metric"]):
        mean, std = g["value"].mean(), g["value"].std(ddof=0)
        rows.append({"paper": paper.key, "source": "cambench", "tag": "ours", "dataset": dataset, "model": model,
                     "method": method, "perturbation": "none", "level": 0.0, "quantity": metric, "value": mean,
                     "ci_low": mean - std, "ci_high": mean + std, "n": len(g),
                     "note": "mean -+ std (the paper's form), not a CI; " + g["params"].iloc[0]})
    return rows


def write_paper_tables(papers: dict[str, list[str]], summary_csv, metric_table, stats_csvs: dict[str, str],
                       methods_config: dict[str, dict], outputs: dict[str, str], index_csv,
                       ensemble_csvs: dict[str, str] | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every paper's table (``papers``: key -> models) and an index of what was made from what.

    ``metric_table``: the metric table's partitions (files or directories, ``cambench.tables``); of them only
    the clean rows of the papers' models and metrics are read (plus one metric per partition, for the
    accuracies), never the perturbed levels."""
    summary = pd.read_csv(summary_csv)
    parts = [p for p in partitions(metric_table) if p.model in {m for ms in papers.values() for m in ms}]
    wanted = {m for key in papers for m in PAPERS[key].metrics} | {"box_iou"}
    frames = [read_block(p, metric) for p in parts if p.perturbation == "none"
              for metric in dict.fromkeys([p.metrics[0], *(m for m in p.metrics if m in wanted)])]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    stats_tables = {name: pd.read_csv(path) for name, path in stats_csvs.items()}
    ensembles = {model: pd.read_csv(path) for model, path in (ensemble_csvs or {}).items()}
    index = []
    for key, models in papers.items():
        present = {m for p in parts if p.model in models for m in p.metrics}
        frame = paper_table(key, summary=summary, table=table, stats_tables=stats_tables, models=models,
                            methods_config=methods_config, ensembles=ensembles, n_boot=n_boot, seed=seed,
                            present=present)
        with atomic_path(outputs[key]) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
        ours = frame[frame["source"] == "cambench"]
        index.append({"paper": key, "citation": PAPERS[key].citation, "what": PAPERS[key].what,
                      "models": ",".join(models), "datasets": ",".join(sorted(set(ours["dataset"]))),
                      "rows_ours": len(ours), "rows_paper": int((frame["source"] == "paper").sum()),
                      "output": str(outputs[key])})
    out = pd.DataFrame(index)
    with atomic_path(index_csv) as tmp:
        out.to_csv(tmp, index=False)
    return out


def cifake_figure(dataset_path, heatmaps_path, output, *, split: str, method: str = "gradcam",
                  per_class: int = 6) -> None:
    """CIFAKE's figure type: Grad-CAM overlays on REAL and FAKE test images, one row pair per class
    (the image, then the overlay with the ground-truth region outlined where the data set has one)."""
    import matplotlib.pyplot as plt

    from .data import read_dataset
    from .plots import save_figure, show_image
    from .store import read_heatmaps

    ds = read_dataset(dataset_path, split)
    hm = read_heatmaps(heatmaps_path, [method])  # only the figure's method (read_heatmaps names the missing one)
    classes = list(range(len(ds.class_names)))
    fig, axes = plt.subplots(2 * len(classes), per_class, figsize=(1.4 * per_class, 2.9 * len(classes)),
                             squeeze=False)
    for c in classes:
        picked = np.flatnonzero(ds.labels == c)[:per_class]
        for j in range(per_class):
            top, bottom = axes[2 * c, j], axes[2 * c + 1, j]
            for ax in (top, bottom):
                ax.set_xticks([])
                ax.set_yticks([])
            if j >= len(picked):
                top.axis("off")
                bottom.axis("off")
                continue
            i = picked[j]
            show_image(top, ds.images[i], interpolation="nearest")
            top.set_title(f"{ds.class_names[c]} → {ds.class_names[hm.predictions[i]]}", fontsize=7)
            show_image(bottom, ds.images[i], interpolation="nearest")
            bottom.imshow(hm.maps[method][i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if ds.masks is not None and ds.masks[i].any():
                bottom.contour(ds.masks[i], levels=[0.5], colors="white", linewidths=0.7)
    fig.suptitle(f"{method} on {split} images (true → predicted); white: the planted region", fontsize=8)
    fig.tight_layout()
    save_figure(fig, output)
