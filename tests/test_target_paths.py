"""cambench.targets: the files a config asks for, level labels, shards, the CSV decision and paper selection,
as known answers on small configs (no Snakemake: rules/common.smk only wraps these)."""
import copy
from pathlib import Path

import pytest
from PIL import Image

from cambench import targets
from cambench.config import validate_config

ROOT = Path(__file__).resolve().parents[1]

# Two 2D stand-ins and a BraTS one (no id masks); 'plusplus' is an alias of gradcampp, sycam's expression searched.
SMALL = {
    "datasets": {"shapes": {"standin": {"kind": "shapes", "counts": {"train": 4, "test": 2}}},
                 "fakes": {"standin": {"kind": "cifake", "counts": {"train": 4, "test": 3}}},
                 "mri": {"standin": {"kind": "brats", "counts": {"cases": 4}}}},
    "models": {"net": {"dataset": "shapes", "architecture": "small_cnn", "target_layer": "features.block4"},
               "fake_net": {"dataset": "fakes", "architecture": "small_cnn", "target_layer": "features.block4",
                            "methods": ["gradcam"]},
               "pp_net": {"dataset": "shapes", "architecture": "small_cnn", "target_layer": "features.block4",
                          "methods": ["plusplus", "sycam"]}},
    "cam": {"methods": {"gradcam": {}, "xgradcam": {}, "plusplus": {"method": "gradcampp"},
                        "sycam": {"expression": "search"}}},
    "perturbations": {"gaussian": [0.1, 0.2, 0.05], "pgd": {"levels": [2], "params": {"steps": 3}}},
    "metrics": {"compute": {"deletion_auc": {}, "pointing_game": {}}},
}


def small_config(tmp_path, **changes):
    """SMALL validated (schema defaults filled in), top-level keys replaced by ``changes``."""
    return validate_config({**copy.deepcopy(SMALL), **changes}, ROOT / "config" / "schema.yaml", tmp_path)


@pytest.fixture
def config(tmp_path):
    return small_config(tmp_path)


def test_level_labels_are_the_shortest_float_form():
    assert [targets.level_label(v) for v in (0, 0.0, 1.0, 2, 0.05, 0.1, 1e-6, 12.5)] == [
        "0", "0", "1", "2", "0.05", "0.1", "1e-06", "12.5"]


def test_the_sweep_starts_clean_keeps_config_order_and_labels_map_back(config):
    assert targets.sweep(config) == [("none", 0.0), ("gaussian", 0.1), ("gaussian", 0.2), ("gaussian", 0.05),
                                     ("pgd", 2.0)]
    assert targets.level_of(config, "gaussian", "0.05") == 0.05
    assert targets.level_of(config, "pgd", "2") == 2.0
    assert targets.level_of(config, "none", "0") == 0.0
    with pytest.raises(ValueError, match="gaussian~0.3 is not in the config's sweep"):
        targets.level_of(config, "gaussian", "0.3")
    with pytest.raises(ValueError, match="pgd~0.1"):  # a level of another kind
        targets.level_of(config, "pgd", "0.1")
    assert targets.perturbation_params(config, "pgd") == {"steps": 3}
    assert targets.perturbation_params(config, "gaussian") == {}
    assert targets.perturbation_params(config, "none") == {}


def test_shards_cover_the_split_the_last_one_partial():
    assert targets.shard_labels(2001, 1000) == ["0000", "0001", "0002"]
    assert targets.shard_labels(2000, 1000) == ["0000", "0001"]
    assert targets.shard_labels(5, 1000) == ["0000"]
    assert targets.shard_labels(0, 1000) == ["0000"]  # an empty split still has its (empty) shard
    assert targets.shard_labels(12_345, 1000)[-1] == "0012"
    assert targets.shard_rows("0000", 1000) == [0, 1000]
    assert targets.shard_rows("0002", 64) == [128, 192]
    assert targets.heatmap_shards("d", "m", "gaussian", "0.1", ["0000", "0001"]) == [
        "results/d/m/heatmaps/gaussian~0.1/shard-0000.h5", "results/d/m/heatmaps/gaussian~0.1/shard-0001.h5"]
    assert targets.metric_shards("d", "m", "none", "0", ["0000"]) == ["results/d/m/metrics/none~0/shard-0000.parquet"]


def test_data_sources_of_stand_ins_and_real_roots(config, tmp_path):
    assert targets.model_pairs(config) == [("shapes", "net"), ("fakes", "fake_net"), ("shapes", "pp_net")]
    assert [targets.format_of(config, d) for d in ("shapes", "fakes", "mri")] == ["imagefolder", "cifake", "brats"]
    assert targets.dataset_source(config, "fakes") == "resources/fakes"
    assert targets.image_root(config, "fakes") == "resources/fakes/data"
    assert targets.mask_root(config, "shapes") == "resources/shapes/masks"
    assert targets.mask_root(config, "mri") == ""  # BraTS carries its own masks
    for split in ("train", "test"):  # the smallest image-folder layout check_config accepts
        (tmp_path / "photos" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "photos" / split / "cat" / "a.png")
    (tmp_path / "masks").mkdir()
    real = small_config(tmp_path, datasets={**SMALL["datasets"], "shapes": {
        "format": "imagefolder", "root": "photos", "mask_root": "masks"}})
    assert targets.format_of(real, "shapes") == "imagefolder"
    assert targets.dataset_source(real, "shapes") == "photos"
    assert targets.image_root(real, "shapes") == "photos"
    assert targets.mask_root(real, "shapes") == "masks"
    assert targets.model_spec(config, "fakes", "fake_net")["methods"] == ["gradcam"]
    with pytest.raises(ValueError, match="model 'fake_net' belongs to dataset 'fakes'"):
        targets.model_spec(config, "shapes", "fake_net")


def test_heatmap_inputs_and_methods(config, tmp_path):
    assert targets.heatmap_inputs(config, "shapes", "net", "gaussian", "0.1", "0001") == {
        "dataset": "results/shapes/dataset.h5", "model": "results/shapes/net/model.pt",
        "sycam": "results/shapes/net/sycam/expression.txt"}
    assert targets.heatmap_inputs(config, "fakes", "fake_net", "none", "0", "0000") == {
        "dataset": "results/fakes/dataset.h5", "model": "results/fakes/fake_net/model.pt"}  # no sycam: not run
    stored = small_config(tmp_path, store_perturbed=True)
    assert targets.heatmap_inputs(stored, "fakes", "fake_net", "pgd", "2", "0003")["perturbed"] == \
        "results/fakes/fake_net/perturbed/pgd~2/shard-0003.h5"
    assert targets.perturbed_input(stored, "fakes", "fake_net", "none", "0", "0003") is None  # clean: nothing stored
    assert targets.perturbed_input(config, "fakes", "fake_net", "pgd", "2", "0003") is None  # regenerated
    with pytest.raises(ValueError, match="belongs to dataset"):
        targets.heatmap_inputs(config, "fakes", "net", "none", "0", "0000")
    assert targets.model_methods(config, "pp_net") == {"plusplus": {"method": "gradcampp"},
                                                      "sycam": {"expression": "search"}}
    assert targets.heatmap_methods(config, "pp_net", "results/shapes/pp_net/sycam/expression.txt") == {
        "plusplus": {"method": "gradcampp"}, "sycam": {"expression": "file:results/shapes/pp_net/sycam/expression.txt"}}
    assert list(targets.heatmap_methods(config, "net", "x")) == ["gradcam", "xgradcam", "plusplus", "sycam"]
    assert config["cam"]["methods"]["sycam"] == {"expression": "search"}  # the config itself is left alone


def test_the_files_a_config_asks_for(config):
    pairs = ["shapes/net", "fakes/fake_net", "shapes/pp_net"]
    levels = ["none~0", "gaussian~0.1", "gaussian~0.2", "gaussian~0.05", "pgd~2"]
    assert targets.heatmap_files(config, "fakes", "fake_net") == [
        f"results/fakes/fake_net/heatmaps/{lv}.h5" for lv in levels]
    assert targets.metric_files(config) == [f"results/metrics/{p}/{lv}.parquet" for p in pairs for lv in levels]
    # gallery_levels 1: the clean images and the strongest level of each kind
    assert targets.gallery_files(config) == [f"results/{p}/figures/gallery_{lv}.jpg" for p in pairs
                                             for lv in ("none~0", "gaussian~0.2", "pgd~2")]
    models = ["net", "fake_net", "pp_net"]
    figures = ["results/figures/rank_heatmap.png", "results/figures/distributions_faithfulness.png",
               "results/figures/distributions_localisation.png",
               *[f"results/figures/critical_difference_{m}.png" for m in models],
               *[f"results/figures/robustness_curves_{m}.png" for m in models]]
    assert targets.figure_files(config) == figures
    outputs = targets.all_outputs(config, metrics_csv=False)
    assert outputs == [
        *targets.PROVENANCE_OUTPUTS,
        "results/tables/metric_summary.csv", "results/tables/friedman.csv", "results/tables/posthoc.csv",
        "results/tables/kruskal.csv", "results/tables/mixed_model.csv", "results/tables/models.csv",
        "results/tables/verdict.csv", "results/verdict/verdict.html", "results/verdict/verdict_summary.html",
        *[f"results/tables/{t}.csv.zip" for t in ("friedman", "posthoc", "kruskal", "mixed_model", "metric_summary")],
        *figures, *targets.gallery_files(config),
        *[f"results/{p}/heatmaps/{lv}.h5" for p in pairs for lv in levels]]
    assert targets.all_outputs(config, metrics_csv=True) == [*outputs[:4], "results/metrics.csv", *outputs[4:]]


def test_figures_follow_the_metrics_computed_and_the_sweep(tmp_path):
    clean = small_config(tmp_path, perturbations={}, metrics={"compute": {"iou": {}, "sparseness": {}}})
    # no sweep: no robustness curves although a curve metric is computed
    assert targets.sweep(clean) == [("none", 0.0)]
    assert targets.report_metrics(clean, "cd_metrics") == ["sparseness"]
    assert targets.report_metrics(clean, "curve_metrics") == ["sparseness"]
    assert targets.figure_files(clean) == [
        "results/figures/rank_heatmap.png", "results/figures/distributions_complexity.png",
        "results/figures/distributions_localisation.png",
        *[f"results/figures/critical_difference_{m}.png" for m in ("net", "fake_net", "pp_net")]]
    swept = small_config(tmp_path, metrics={"compute": {"consistency": {}, "responsiveness": {}}})
    assert targets.report_metrics(swept, "cd_metrics") == []
    assert targets.report_metrics(swept, "curve_metrics") == ["consistency"]
    assert targets.figure_files(swept) == [
        "results/figures/rank_heatmap.png", "results/figures/distributions_robustness.png",
        *[f"results/figures/robustness_curves_{m}.png" for m in ("net", "fake_net", "pp_net")],
        "results/figures/consistency_responsiveness.png"]


def test_metric_families_come_from_the_registry():
    assert targets.metric_families() == ["axioms", "complexity", "faithfulness", "localisation", "robustness",
                                         "sanity"]
    assert targets.metric_families(["pointing_game", "iou", "mprt"]) == ["localisation", "sanity"]


def test_provenance_reads_every_result_once_and_not_its_own_outputs(config):
    inputs = targets.provenance_inputs(config, metrics_csv=True)
    assert len(inputs) == len(set(inputs))
    assert not set(targets.PROVENANCE_OUTPUTS) & set(inputs)
    assert inputs[:5] == ["results/shapes/dataset.h5", "results/fakes/dataset.h5", "results/shapes/net/model.pt",
                          "results/fakes/fake_net/model.pt", "results/shapes/pp_net/model.pt"]
    assert set(targets.metric_files(config)) <= set(inputs)
    assert "results/metrics.csv" in inputs
    assert set(inputs) == ({f"results/{d}/dataset.h5" for d in ("shapes", "fakes")}
                           | {f"results/{d}/{m}/model.pt" for d, m in targets.model_pairs(config)}
                           | set(targets.metric_files(config))
                           | set(targets.all_outputs(config, True)) - set(targets.PROVENANCE_OUTPUTS))
    assert "results/metrics.csv" not in targets.provenance_inputs(config, metrics_csv=False)


def test_the_csv_decision(tmp_path, monkeypatch):
    from cambench import plan

    def with_csv(**csv):
        return small_config(tmp_path, metrics={**SMALL["metrics"], **csv})

    bound = plan.metric_row_bound(with_csv(), tmp_path)
    assert bound and bound > 0
    assert targets.metrics_csv_wanted(with_csv(csv="auto", csv_max_rows=bound), tmp_path) is True
    assert targets.metrics_csv_wanted(with_csv(csv="auto", csv_max_rows=bound - 1), tmp_path) is False
    assert targets.metrics_csv_wanted(with_csv(csv="always", csv_max_rows=0), tmp_path) is True
    assert targets.metrics_csv_wanted(with_csv(csv="never", csv_max_rows=10 ** 12), tmp_path) is False
    monkeypatch.setattr(plan, "metric_row_bound", lambda config, workdir: None)  # a size the plan cannot tell
    assert targets.metrics_csv_wanted(with_csv(csv="auto", csv_max_rows=10 ** 12), tmp_path) is False


def test_paper_selection_by_domain_methods_and_config(config, tmp_path):
    every = ["net", "fake_net", "pp_net"]
    # Finer-CAM, MetaCAM, AME-CAM (BraTS model) and street papers: no model qualifies, left out
    assert targets.paper_selection(config) == {"selvaraju2017_gradcam": every, "fu2020_xgradcam": every,
                                               "sarkar2025_noise_robustness": every, "bird2023_cifake": ["fake_net"]}
    assert sorted(targets.model_method_names(config, "pp_net")) == ["gradcampp", "plusplus", "sycam"]
    assert targets.metacam_models(config) == []
    assert targets.cifake_pairs(config) == [("fakes", "fake_net")]
    assert targets.paper_figure_files(config) == [
        "results/papers/selvaraju2017_gradcam.csv", "results/papers/fu2020_xgradcam.csv",
        "results/papers/sarkar2025_noise_robustness.csv", "results/papers/bird2023_cifake.csv",
        "results/papers/index.csv", "results/fakes/fake_net/papers/cifake_gradcam.png"]
    # the alias 'plusplus' counts as gradcampp: without it pp_net runs none of the Grad-CAM paper's methods
    only_sycam = small_config(tmp_path, models={**SMALL["models"], "pp_net": {**SMALL["models"]["pp_net"],
                                                                               "methods": ["sycam"]}})
    assert targets.paper_selection(only_sycam)["selvaraju2017_gradcam"] == ["net", "fake_net"]
    chosen = small_config(tmp_path, papers={"include": ["bird2023_cifake", "kaczmarek2023_metacam"],
                                            "models": {"kaczmarek2023_metacam": ["pp_net"]}})
    assert targets.paper_selection(chosen) == {"bird2023_cifake": ["fake_net"], "kaczmarek2023_metacam": ["pp_net"]}
    assert targets.metacam_models(chosen) == ["pp_net"]
    assert targets.paper_figure_files(chosen) == [
        "results/papers/bird2023_cifake.csv", "results/papers/kaczmarek2023_metacam.csv",
        "results/papers/index.csv", "results/fakes/fake_net/papers/cifake_gradcam.png"]


def test_gpus_per_job():
    assert targets.gpus_per_job("cpu") == 0
    assert targets.gpus_per_job("cuda") == 1
    assert targets.gpus_per_job("cuda:1") == 1
    assert targets.gpus_per_job("auto") in (0, 1)
