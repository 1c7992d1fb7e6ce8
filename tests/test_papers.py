"""The paper-figure tables: model selection by domain, our values beside the papers' numbers."""
import json

import numpy as np
import pandas as pd
import pytest

import cambench
from cambench.data.formats import FORMATS as FORMAT_REGISTRY
from cambench.papers import PAPER_COLUMNS, PAPERS, paper_models, paper_table

MODELS = {"cnn": {"dataset": "shapes"}, "fake": {"dataset": "cifake"}, "mri": {"dataset": "brats"}}
FORMATS = {"shapes": "imagefolder", "cifake": "cifake", "brats": "brats"}
METHODS = {"cnn": ["gradcam", "gradcampp", "finer", "finercam"], "fake": ["gradcam"], "mri": ["amecam", "gradcam"]}


def test_models_are_chosen_by_domain_and_methods():
    assert paper_models("bird2023_cifake", MODELS, FORMATS, METHODS) == ["fake"]
    assert paper_models("chen2023_amecam", MODELS, FORMATS, METHODS) == ["mri"]
    assert paper_models("mishra2022_street", MODELS, FORMATS, METHODS) == []  # no street model: left out
    assert paper_models("fu2020_xgradcam", MODELS, FORMATS, METHODS) == ["cnn", "fake", "mri"]
    assert paper_models("fu2020_xgradcam", MODELS, FORMATS, {"cnn": ["eigencam"]}) == []
    assert paper_models("bird2023_cifake", MODELS, FORMATS, METHODS, chosen=["cnn"]) == ["cnn"]
    with pytest.raises(ValueError, match="papers.models.bird2023_cifake: unknown model"):
        paper_models("bird2023_cifake", MODELS, FORMATS, METHODS, chosen=["nope"])


def _table(rng, methods=("gradcam", "gradcampp"), n=40):
    rows = []
    for m_i, method in enumerate(methods):
        for i in range(n):
            label = i % 2
            prediction = label if i % 10 else 1 - label          # 90 % correct
            box = 0.8 if (i % 4) or m_i else 0.2                 # gradcam: 3/4 boxes hit
            for metric, value in (("box_iou", box), ("pointing_game", float(i % 5 != 0)),
                                  ("dice", 0.5 + 0.1 * m_i + 0.01 * (i % 3))):
                rows.append(dict(dataset="shapes", model="cnn", method=method, perturbation="none", level=0.0,
                                 image_id=f"i{i}", label=label, target=prediction, prediction=prediction,
                                 clean_prediction=prediction, metric=metric, value=value, score="prob",
                                 params=json.dumps({"threshold": "frac"})))
    return pd.DataFrame(rows)


def _summary(table):
    g = table.groupby(["dataset", "model", "method", "perturbation", "level", "metric"])["value"]
    s = g.agg(["mean", "size"]).reset_index().rename(columns={"size": "n"})
    s["ci_low"], s["ci_high"] = s["mean"] - 0.1, s["mean"] + 0.1
    return s


def test_gradcam_localisation_error_from_boxes_and_classes():
    table = _table(np.random.default_rng(0))
    out = paper_table("selvaraju2017_gradcam", summary=_summary(table), table=table, stats_tables={},
                      models=["cnn"], methods_config={}, n_boot=200)
    assert list(out.columns) == PAPER_COLUMNS
    ours = out[out.source == "cambench"].set_index(["method", "quantity"])["value"]
    # gradcam: located = correct (36/40) and box hit (30/40); misses overlap where i % 4 == 0 and i % 10 == 0
    correct = np.array([i % 10 != 0 for i in range(40)])
    hit = np.array([i % 4 != 0 for i in range(40)])
    assert ours[("gradcam", "localisation_error_top1")] == pytest.approx(100 * (1 - (correct & hit).mean()))
    assert ours[("gradcampp", "localisation_error_top1")] == pytest.approx(100 * (1 - correct.mean()))
    assert ours[("gradcam", "classification_error_top1")] == pytest.approx(10.0)
    assert ours[("gradcam", "pointing_game")] == pytest.approx(0.8)
    paper = out[out.source == "paper"]
    assert paper.set_index(["model", "quantity"]).loc[("VGG-16", "localisation_error_top1"), "value"] == 56.51
    assert len(paper) == 12 and paper["tag"].str.contains("reproduction").all()


def test_amecam_reports_mean_and_std():
    table = _table(np.random.default_rng(0), methods=("amecam", "gradcam"))
    out = paper_table("chen2023_amecam", summary=_summary(table), table=table, stats_tables={}, models=["cnn"],
                      methods_config={})
    row = out[(out.source == "cambench") & (out.method == "amecam")].iloc[0]
    values = table[(table.method == "amecam") & (table.metric == "dice")]["value"]
    assert row.value == pytest.approx(values.mean()) and row.ci_high - row.value == pytest.approx(values.std(ddof=0))
    assert "std" in row.note and (out.source == "paper").sum() == 1


def test_finer_pairs_select_the_base_comparison():
    table = _table(np.random.default_rng(0), methods=("gradcam", "finer", "gradcampp"))
    table.loc[table.metric == "dice", "metric"] = "relative_drop"
    posthoc = pd.DataFrame([
        dict(dataset="shapes", model="cnn", perturbation="none", level=0.0, metric="relative_drop", test="wilcoxon",
             groups=g, statistic=1.0, p=0.01, p_adj=0.02, effect_size=0.5, effect_name="rank_biserial", n=40)
        for g in ("finer,gradcam", "gradcam,gradcampp")])
    out = paper_table("zhang2025_finercam", summary=_summary(table), table=table, stats_tables={"posthoc": posthoc},
                      models=["cnn"], methods_config={"finer": {"method": "finercam", "base": "gradcam"},
                                                      "gradcam": {}, "gradcampp": {}})
    ours = out[out.tag == "ours"]
    assert set(ours.method) == {"finer", "gradcam"}  # Finer-CAM and its base, not the other methods
    tests = out[out.tag == "ours (test)"]
    assert tests["method"].tolist() == ["finer,gradcam"] and "Holm p = 0.02" in tests["note"].iloc[0]


def test_metacam_ensemble_sizes_and_cre():
    ens = pd.DataFrame([dict(dataset="shapes", model="cnn", kind="subset", subset=s, size=len(s.split("+")), value=v)
                        for s, v in (("a", 0.1), ("b", 0.3), ("a+b", 0.4))]
                       + [dict(dataset="shapes", model="cnn", kind="cre", subset="a", size=np.nan, value=-0.2)])
    table = _table(np.random.default_rng(0))
    table.loc[table.metric == "dice", "metric"] = "road_combined"
    out = paper_table("kaczmarek2023_metacam", summary=_summary(table), table=table, stats_tables={},
                      models=["cnn"], methods_config={}, ensembles={"cnn": ens})
    sizes = out[out.quantity.str.endswith("over_subsets")].set_index(["method", "quantity"])["value"]
    assert sizes[("metacam, 1 components", "road_combined_max_over_subsets")] == 0.3
    assert sizes[("metacam, 2 components", "road_combined_mean_over_subsets")] == 0.4
    assert out[out.quantity == "cumulative_residual_effect"]["value"].tolist() == [-0.2]
    assert set(out[out.source == "paper"]["value"]) == {0.393, -0.101, 0.172}


def test_a_paper_without_our_values_is_an_error():
    table = _table(np.random.default_rng(0))
    with pytest.raises(ValueError, match="mishra2022_street"):
        paper_table("mishra2022_street", summary=_summary(table), table=table, stats_tables={}, models=["cnn"],
                    methods_config={})


def test_every_paper_has_reference_rows_and_a_domain_rule():
    """Reference rows tagged with their provenance; a domain rule (formats, methods, metrics) that
    names only registered formats, methods and metrics, and that some models pass and others fail."""
    for key, paper in PAPERS.items():
        assert paper.reference, key
        assert all("tag" in r for r in paper.reference), key
        assert paper.formats is None or set(paper.formats) <= set(FORMAT_REGISTRY.names()), key
        assert set(paper.methods) <= set(cambench.methods()), key
        assert paper.metrics and set(paper.metrics) <= set(cambench.metrics()), key
    # the rule itself: a model qualifies by its data set's format and by running one of the methods
    models = {"street_cnn": {"dataset": "streets"}, "shapes_cnn": {"dataset": "shapes"}}
    formats = {"streets": "street", "shapes": "imagefolder"}
    methods = {"street_cnn": ["gradcam"], "shapes_cnn": ["finercam"]}
    assert paper_models("mishra2022_street", models, formats, methods) == ["street_cnn"]
    assert paper_models("zhang2025_finercam", models, formats, methods) == ["shapes_cnn"]
    assert paper_models("selvaraju2017_gradcam", models, formats, methods) == ["street_cnn"]


def _ranked_table(target_is_label=True, gt_box="boxes", label_rank=True):
    """8 images of one method with planted label ranks and box IoUs (boundaries 0.5 / rank 5 included)."""
    ranks = [1, 1, 1, 2, 3, 6, 1, 5]
    ious = [0.9, 0.5, 0.4, 0.7, 0.8, 0.9, 0.49, 0.6]
    rows = []
    for i, (rank, iou) in enumerate(zip(ranks, ious)):
        label = i % 3
        prediction = label if rank == 1 else (label + 1) % 3
        rows.append(dict(dataset="imagenet", model="vgg", method="gradcam", perturbation="none", level=0.0,
                         image_id=f"i{i}", label=label, target=label if target_is_label else prediction,
                         prediction=prediction, label_rank=rank, clean_prediction=prediction, metric="box_iou",
                         value=iou, score="", params=json.dumps({"gt_box": gt_box, "threshold": 0.15}),
                         map_flags=0))
        # the same image under noise: not the clean table the paper's errors are read from
        rows.append(dict(rows[-1], perturbation="gaussian", level=0.1, value=0.0, label_rank=9))
    table = pd.DataFrame(rows)
    table["label_rank"] = table["label_rank"].astype("Int64")
    return table if label_rank else table.drop(columns="label_rank")


def _gradcam_errors(table):
    out = paper_table("selvaraju2017_gradcam", summary=_summary(table), table=table, stats_tables={},
                      models=["vgg"], methods_config={}, n_boot=100)
    return out, out[out.source == "cambench"].set_index("quantity")


def test_gradcam_top1_and_top5_errors_from_label_ranks():
    out, ours = _gradcam_errors(_ranked_table())
    # correct (rank 1): 4/8; top-5: 7/8; IoU >= 0.5: 6/8; correct & hit: 2/8; top-5 & hit: 5/8
    assert ours["value"].to_dict() == {"localisation_error_top1": 75.0, "localisation_error_top5": 37.5,
                                       "classification_error_top1": 50.0, "classification_error_top5": 12.5}
    assert (ours["n"] == 8).all()
    assert ours["note"].str.contains("annotated boxes of the label class").all()
    paper = out[out.source == "paper"].set_index(["model", "quantity"])["value"]
    assert paper[("VGG-16", "localisation_error_top5")] == 46.41 and len(paper) == 12


def test_maps_of_the_prediction_give_no_top5_localisation_error():
    _, ours = _gradcam_errors(_ranked_table(target_is_label=False, gt_box="mask_bbox"))
    assert sorted(ours.index) == ["classification_error_top1", "classification_error_top5", "localisation_error_top1"]
    assert ours.loc["localisation_error_top1", "value"] == 75.0
    assert ours.loc["classification_error_top5", "value"] == 12.5
    note = ours.loc["localisation_error_top1", "note"]
    assert "class_source: gt" in note and "mask's bounding box" in note


def test_a_table_without_label_ranks_gives_top1_errors_only():
    _, ours = _gradcam_errors(_ranked_table(label_rank=False))
    assert sorted(ours.index) == ["classification_error_top1", "localisation_error_top1"]
    assert "no label ranks" in ours.loc["localisation_error_top1", "note"]
