import copy
from pathlib import Path

import pytest
import yaml

from cambench.config import ConfigError, validate_config
from cambench.engine import method_of

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def with_change(path: str, value):
    cfg = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


DELETE = object()


def test_a_method_can_run_under_several_labels():
    cfg = with_change("cam.methods", {"score_pgc": {"method": "scorecam"},
                                      "score_tc": {"method": "scorecam", "variant": "torchcam"}})
    cfg["models"]["shapes_ame"]["methods"] = ["score_pgc"]
    out = validate_config(cfg, SCHEMA)
    assert [method_of(label, p) for label, p in out["cam"]["methods"].items()] == [
        ("scorecam", {}), ("scorecam", {"variant": "torchcam"})]
    assert out["models"]["shapes_ame"]["methods"] == ["score_pgc"]
    # a label's parameters are checked against its method's, and the error names the label
    cfg["cam"]["methods"]["score_tc"]["alpha"] = 1
    with pytest.raises(ConfigError, match=r"'cam\.methods\.score_tc': unknown parameter\(s\) \['alpha'\] "
                                          r"for method 'scorecam'"):
        validate_config(cfg, SCHEMA)


def test_default_config_is_valid_and_gets_defaults():
    cfg = validate_config(copy.deepcopy(DEFAULT), SCHEMA)
    assert cfg["datasets"]["shapes"]["channels"] == 3        # filled from the schema
    assert cfg["models"]["shapes_cnn"]["train"]["epochs"] == 24        # kept, not replaced by the schema default (20)


def test_every_schema_key_has_a_description_and_a_default():
    schema = yaml.safe_load(SCHEMA.read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub or key == "dataset", f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{path}*.")
    walk(schema, "")


BAD = [
    ("cam.batchsize", 3, "config key 'cam': unknown key(s) ['batchsize']"),
    ("cam.batch_size", "abc", "config key 'cam.batch_size': expected integer"),
    ("cam.batch_size", 0, "config key 'cam.batch_size'"),
    ("cam.class_source", "guess", "config key 'cam.class_source': 'guess' is not allowed"),
    ("cam.dtype", "float64", "config key 'cam.dtype'"),
    ("cam.methods", {"gradcamm": {}}, "config key 'cam.methods.gradcamm': unknown method 'gradcamm'; registered: "),
    ("cam.methods", {"gradcampp": {"epsilon": 1}}, "config key 'cam.methods.gradcampp': unknown parameter"),
    ("cam.methods", {}, "config key 'cam.methods': must not be empty"),
    ("cam.methods", {"gradcampp": {"eps": "small"}},
     "config key 'cam.methods.gradcampp': parameter 'eps' of method 'gradcampp' must be a number, got 'small'"),
    ("cam.methods", {"gradcampp": {"eps": True}},
     "config key 'cam.methods.gradcampp': parameter 'eps' of method 'gradcampp' must be a number, got True"),
    ("cam.methods", {"score_fast": {"method": "scorecamm"}},
     "config key 'cam.methods.score_fast': unknown method 'scorecamm'"),
    ("cam.methods", {"layercam_ms": {"layers": "features.block2"}},
     "parameter 'layers' of method 'layercam_ms' must be a list"),
    ("cam.methods", {"../x": {"method": "gradcam"}}, "cam.methods"),
    ("cam.memory_mb", 0, "cam.memory_mb"),
    ("models.shapes_ame.methods", ["amecam", "gradcamm"],
     "config key 'models.shapes_ame.methods': ['gradcamm'] are not labels of cam.methods"),
    ("cam.sycam.split", "test", "config key 'cam.sycam.split': 'test' is the evaluation split"),
    ("cam.sycam.terminals", ["gradcam", "magic"], "config key 'cam.sycam.terminals': unknown ['magic']"),
    ("cam.methods.sycam", {"expression": "relu(gradcam"}, "config key 'cam.methods.sycam.expression'"),
    ("perturbations", {"gaussian": [0.1, 2.0]}, "config key 'perturbations.gaussian': levels [2.0] out of range"),
    ("perturbations", {"gaussian": [-0.1]}, "config key 'perturbations.gaussian.0'"),
    ("perturbations", {"gaussian": []}, "config key 'perturbations.gaussian': must not be empty"),
    ("perturbations", {"fog": [0.1]}, "config key 'perturbations.fog': unknown perturbation 'fog'"),
    ("perturbations", {"none": [1]}, "config key 'perturbations.none'"),
    ("perturbations", {}, "need a perturbation sweep"),
    ("metrics.compute", {"ioux": {}}, "config key 'metrics.compute.ioux': unknown metric 'ioux'"),
    ("metrics.compute", {"mprt": {"scope": 3}}, "config key 'metrics.compute.mprt': parameter 'scope'"),
    ("perturbations", {"pgd": {"levels": [2], "params": {"stepz": 3}}},
     "config key 'perturbations.pgd': unknown parameter(s) ['stepz'] for perturbation 'pgd'"),
    ("perturbations", {"gaussian": {"levels": [0.1], "params": {"x": 1}}},
     "config key 'perturbations.gaussian.params': perturbation 'gaussian' takes no parameters"),
    ("perturbations", {"fgsm": [300]}, "config key 'perturbations.fgsm': levels [300.0] out of range (0, 255"),
    ("perturbations", {"pgd": {"params": {}}}, "config key 'perturbations.pgd'"),
    ("metrics.compute", {"deletion_auc": {"score": "logit"}}, "metrics.compute.deletion_auc.score"),
    ("metrics.score", "probability", "config key 'metrics.score'"),
    ("seed", -1, "config key 'seed'"),
    ("device", "gpu", "config key 'device'"),
    ("models.shapes_cnn.dataset", "cifar", "config key 'models.shapes_cnn.dataset': unknown dataset 'cifar'"),
    ("models.shapes_cnn.architecture", "resnet", "unknown architecture 'resnet'"),
    ("models.shapes_cnn.params", {"depth": 3}, "config key 'models.shapes_cnn.params': unknown parameter"),
    ("models.shapes_cnn.train.lr", 0, "config key 'models.shapes_cnn.train.lr'"),
    ("models.shapes_cnn.train.aggregator_epochs", 3,
     "config key 'models.shapes_cnn.train.aggregator_epochs': architecture 'small_cnn' has no second training phase"),
    ("datasets.shapes.standin.classes", ["disk", "hexagon"], "config key 'datasets.shapes.standin.classes.1'"),
    ("datasets.shapes.root", "data/x", "give either 'standin'"),
    ("datasets.shapes.standin.kind", "cifar", "config key 'datasets.shapes.standin.kind'"),
    ("datasets.shapes.standin.kind", "none", "config key 'datasets.shapes.root': required"),
    ("datasets.shapes.standin.counts", {"test": 5}, "a 'train' split is needed"),
    ("cam.split", "val", "config key 'cam.split': split 'val' is not generated"),
    ("report.gallery_images", 1000, "config key 'report.gallery_images'"),
    ("sed", 0, "unknown key(s) ['sed']; allowed: "),
    ("deterministic", "yes", "config key 'deterministic': expected boolean"),
    ("models.shapes_cnn.weights_exclude", ["fc"],
     "config key 'models.shapes_cnn.weights_exclude': set only together with 'models.shapes_cnn.weights'"),
    ("models.shapes_cnn.train.epochs", 0, "config key 'models.shapes_cnn.train.epochs': 0 epochs (no training) needs"),
    ("stats.mixed_model_metrics", ["iou", "iuo"], "config key 'stats.mixed_model_metrics': unknown metric(s) ['iuo']"),
    ("papers.include", ["gradcam2017"], "config key 'papers.include': unknown paper(s) ['gradcam2017']; available: "),
    ("report.curve_metrics", [], "config key 'report.curve_metrics': must not be empty"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_configs_name_the_key(path, value, message):
    with pytest.raises(ConfigError) as err:
        validate_config(with_change(path, value), SCHEMA)
    assert message in str(err.value)
    assert str(err.value).count("registered:") <= 1  # the allowed names are listed once


def test_names_that_would_escape_the_results_folder_are_rejected():
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["../evil"] = cfg["datasets"].pop("shapes")
    with pytest.raises(ConfigError, match="name '../evil' is not allowed"):
        validate_config(cfg, SCHEMA)
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"]["/abs"] = cfg["models"].pop("shapes_cnn")
    with pytest.raises(ConfigError, match="name '/abs' is not allowed"):
        validate_config(cfg, SCHEMA)


def test_an_empty_standin_means_all_standin_defaults():
    cfg = validate_config(with_change("datasets.shapes.standin", {"kind": "shapes"}), SCHEMA)
    assert cfg["datasets"]["shapes"]["standin"]["counts"] == {"train": 800, "test": 60}


def test_a_missing_data_root_is_reported(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["shapes"] = {"root": "no/such/folder"}
    with pytest.raises(ConfigError, match="datasets.shapes.root': folder not found: no/such/folder"):
        validate_config(cfg, SCHEMA, workdir=tmp_path)
