import copy
from pathlib import Path

import pytest
import yaml

from cambench.config import ConfigError, load_schema, schema_errors, validate_config
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
    with pytest.raises(ConfigError, match=r"^config key 'cam\.methods\.score_tc': unknown parameter\(s\) \['alpha'\] "
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


def test_the_schema_lists_no_names_a_registry_knows():
    # Formats, stand-in kinds, shapes, architectures, methods, metrics and perturbation kinds are checked
    # against their registries (config.py) and listed from them in docs/configuration.md, not kept here too.
    from cambench.data import FORMATS, SHAPES, STANDIN_FORMATS
    from cambench.engine import METHODS
    from cambench.metrics import METRICS
    from cambench.models import ARCHITECTURES
    from cambench.perturbations import PERTURBATIONS
    registered = set(FORMATS.names()) | set(SHAPES) | set(STANDIN_FORMATS) | set(ARCHITECTURES.names()) | \
        set(METRICS.names()) | set(PERTURBATIONS.names()) | set(METHODS.names())

    def enums(node):
        if isinstance(node, dict):
            yield from [node["enum"]] if "enum" in node else []
            for value in node.values():
                yield from enums(value)
        elif isinstance(node, list):
            for value in node:
                yield from enums(value)
    listed = {value for enum in enums(yaml.safe_load(SCHEMA.read_text())) for value in enum}
    assert listed and not listed & registered, sorted(listed & registered)


BAD = [
    ("cam.batchsize", 3, "config key 'cam': unknown key(s) ['batchsize']; allowed: batch_size, class_source, dtype, "),
    ("cam.batch_size", "abc", "config key 'cam.batch_size': expected integer, got 'abc'"),
    ("cam.batch_size", 0, "config key 'cam.batch_size': 0 is less than the minimum of 1"),
    ("cam.class_source", "guess",
     "config key 'cam.class_source': 'guess' is not allowed; allowed values: ['pred', 'gt']"),
    ("cam.dtype", "float64",
     "config key 'cam.dtype': 'float64' is not allowed; allowed values: ['float16', 'float32']"),
    ("cam.methods", {"gradcamm": {}}, "config key 'cam.methods.gradcamm': unknown method 'gradcamm'; registered: "),
    ("cam.methods", {"gradcampp": {"epsilon": 1}},
     "config key 'cam.methods.gradcampp': unknown parameter(s) ['epsilon'] for method 'gradcampp'; allowed: ['eps']"),
    ("cam.methods", {}, "config key 'cam.methods': must not be empty"),
    ("cam.methods", {"gradcampp": {"eps": "small"}},
     "config key 'cam.methods.gradcampp.eps': parameter 'eps' of method 'gradcampp' must be a number in (0, inf), "
     "got 'small'"),
    ("cam.methods", {"gradcampp": {"eps": True}},
     "config key 'cam.methods.gradcampp.eps': parameter 'eps' of method 'gradcampp' must be a number in (0, inf), "
     "got True"),
    ("cam.methods", {"score_fast": {"method": "scorecamm"}},
     "config key 'cam.methods.score_fast': unknown method 'scorecamm'; registered: "),
    ("cam.methods", {"layercam_ms": {"layers": "features.block2"}},
     "config key 'cam.methods.layercam_ms.layers': parameter 'layers' of method 'layercam_ms' must be a list, "
     "got 'features.block2'"),
    ("cam.methods", {"../x": {"method": "gradcam"}},
     "config key 'cam.methods': name '../x' is not allowed; names must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"),
    ("models.shapes_ame.methods", ["../x"],
     "config key 'models.shapes_ame.methods.0': name '../x' is not allowed; names must match "),
    ("cam.memory_mb", 0, "config key 'cam.memory_mb': 0 is less than or equal to the minimum of 0"),
    ("models.shapes_ame.methods", ["amecam", "gradcamm"],
     "config key 'models.shapes_ame.methods': ['gradcamm'] are not labels of cam.methods"),
    ("cam.sycam.split", "test", "config key 'cam.sycam.split': 'test' is the evaluation split (cam.split)"),
    ("cam.sycam.split", "val", "config key 'cam.sycam.split': split 'val' is not generated by "
                               "datasets.shapes.standin.counts (train, test) (model 'shapes_cnn' searches on it)"),
    ("cam.sycam.terminals", ["gradcam", "magic"], "config key 'cam.sycam.terminals': unknown ['magic']; available: "),
    ("cam.sycam.metric", "pointing", "config key 'cam.sycam.metric': unknown metric 'pointing'; registered: "),
    ("cam.sycam.metric_params", {"tolerance_px": -4},
     "config key 'cam.sycam.metric_params.tolerance_px': parameter 'tolerance_px' of metric 'pointing_game' must be "
     "a number in [0, inf), got -4"),
    ("cam.methods.sycam", {"expression": "relu(gradcam"},
     "config key 'cam.methods.sycam.expression': sycam expression 'relu(gradcam': unbalanced parentheses"),
    ("perturbations", {"gaussian": [0.1, 2.0]},
     "config key 'perturbations.gaussian': levels [2.0] out of range (0, 1.0]"),
    ("perturbations", {"gaussian": [-0.1]}, "config key 'perturbations.gaussian.0': -0.1 is less than or equal to "),
    ("perturbations", {"gaussian": []}, "config key 'perturbations.gaussian': must not be empty"),
    ("perturbations", {"fog": [0.1]}, "config key 'perturbations.fog': unknown perturbation 'fog'; registered: "),
    ("perturbations", {"none": [1]}, "config key 'perturbations.none': the clean images are always included"),
    ("perturbations", {}, "config key 'metrics.compute': ['consistency', 'flip_rate', 'noise_robustness', "
                          "'responsiveness'] need a perturbation sweep, but 'perturbations' is empty"),
    ("metrics.compute", {"ioux": {}}, "config key 'metrics.compute.ioux': unknown metric 'ioux'; registered: "),
    ("metrics.compute", {"mprt": {"scope": 3}},
     "config key 'metrics.compute.mprt.scope': parameter 'scope' of metric 'mprt' must be one of 'all', 'above', "
     "'below', got 3"),
    ("perturbations", {"pgd": {"levels": [2], "params": {"stepz": 3}}},
     "config key 'perturbations.pgd.params': unknown parameter(s) ['stepz'] for perturbation 'pgd'"),
    ("perturbations", {"pgd": {"levels": [2], "params": {"steps": 0}}},
     "config key 'perturbations.pgd.params.steps': parameter 'steps' of perturbation 'pgd' must be an integer in "
     "[1, inf), got 0"),
    ("perturbations", {"gaussian": {"levels": [0.1], "params": {"x": 1}}},
     "config key 'perturbations.gaussian.params': perturbation 'gaussian' takes no parameters"),
    ("perturbations", {"fgsm": [300]}, "config key 'perturbations.fgsm': levels [300.0] out of range (0, 255.0]"),
    ("perturbations", {"pgd": {"params": {}}}, "config key 'perturbations.pgd': 'levels' is a required property"),
    ("metrics.compute", {"deletion_auc": {"score": "logit"}},
     "config key 'metrics.compute.deletion_auc.score': set the score once in 'metrics.score'"),
    ("metrics.score", "probability", "config key 'metrics.score': 'probability' is not allowed; allowed values: "),
    ("seed", -1, "config key 'seed': -1 is less than the minimum of 0"),
    ("device", "gpu", "config key 'device': 'gpu' does not match "),
    ("models.shapes_cnn.dataset", "cifar",
     "config key 'models.shapes_cnn.dataset': unknown dataset 'cifar'; defined: "),
    ("models.shapes_cnn.architecture", "resnet",
     "config key 'models.shapes_cnn.architecture': unknown architecture 'resnet'; registered: "),
    ("models.shapes_cnn.params", {"depth": 3},
     "config key 'models.shapes_cnn.params': unknown parameter(s) ['depth'] for architecture 'small_cnn'"),
    ("models.shapes_cnn.params", {"widths": [16, 32, 64]},
     "config key 'models.shapes_cnn.params': architecture 'small_cnn' cannot be built with {'widths': [16, 32, 64]}: "),
    ("models.shapes_cnn.target_layer", "features.block5",
     "config key 'models.shapes_cnn.target_layer': no layer 'features.block5' in architecture 'small_cnn' "),
    ("models.shapes_cnn.train.lr", 0, "config key 'models.shapes_cnn.train.lr': 0 is less than or equal to "),
    ("models.shapes_cnn.train.aggregator_epochs", 3,
     "config key 'models.shapes_cnn.train.aggregator_epochs': architecture 'small_cnn' has no second training phase"),
    ("datasets.shapes.standin.classes", ["disk", "hexagon"],
     "config key 'datasets.shapes.standin.classes.1': 'hexagon' is not allowed; allowed values: "),
    ("datasets.shapes.root", "data/x", "config key 'datasets.shapes': give either 'standin'"),
    ("datasets.shapes.standin.kind", "cifar", "config key 'datasets.shapes.standin.kind': 'cifar' is not allowed"),
    ("datasets.shapes.format", "jpegs", "config key 'datasets.shapes.format': unknown format 'jpegs'; registered: "
                                        "brats, cifake, cifar10, dicom_ct, imagefolder, imagenet, mosmed, street"),
    ("datasets.shapes.standin.kind", "none", "config key 'datasets.shapes.root': required"),
    ("datasets.shapes.standin.counts", {"test": 5},
     "config key 'datasets.shapes.standin.counts': a 'train' split is needed to train model 'shapes_cnn'"),
    ("cam.split", "val", "config key 'cam.split': split 'val' is not generated"),
    ("report.gallery_images", 1000, "config key 'report.gallery_images': 1000 is greater than the maximum of 64"),
    ("sed", 0, "config key '(top level)': unknown key(s) ['sed']; allowed: "),
    ("deterministic", "yes", "config key 'deterministic': expected boolean"),
    ("models.shapes_cnn.weights_exclude", ["fc"],
     "config key 'models.shapes_cnn.weights_exclude': set only together with 'models.shapes_cnn.weights'"),
    ("models.shapes_cnn.train.epochs", 0, "config key 'models.shapes_cnn.train.epochs': 0 epochs (no training) needs"),
    ("stats.mixed_model_metrics", ["iou", "iuo"],
     "config key 'stats.mixed_model_metrics': unknown metric(s) ['iuo']; registered: "),
    ("papers.include", ["gradcam2017"], "config key 'papers.include': unknown paper(s) ['gradcam2017']; available: "),
    ("report.curve_metrics", [], "config key 'report.curve_metrics': must not be empty"),
    ("report.cd_metrics", ["iou", "iuo"], "config key 'report.cd_metrics': unknown metric(s) ['iuo']; registered: "),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_configs_name_the_key(path, value, message):
    assert message.startswith("config key '")
    with pytest.raises(ConfigError) as err:
        validate_config(with_change(path, value), SCHEMA)
    assert str(err.value).startswith(message)  # the key is the first thing said, and the right one
    if "registered: " in message:
        assert str(err.value).count("registered:") == 1  # the allowed names are listed, once


def test_names_that_would_escape_the_results_folder_are_rejected():
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["../evil"] = cfg["datasets"].pop("shapes")
    with pytest.raises(ConfigError, match=r"^config key 'datasets': name '\.\./evil' is not allowed; names must match"):
        validate_config(cfg, SCHEMA)
    cfg = copy.deepcopy(DEFAULT)
    cfg["models"]["/abs"] = cfg["models"].pop("shapes_cnn")
    with pytest.raises(ConfigError, match=r"^config key 'models': name '/abs' is not allowed; names must match"):
        validate_config(cfg, SCHEMA)
    # Method labels become file and dataset names too: a cam.methods key, and a model's list of labels
    # (refused by its own pattern, even where cam.methods defines that label).
    cfg = copy.deepcopy(DEFAULT)
    cfg["cam"]["methods"]["../evil"] = {"method": "gradcam"}
    with pytest.raises(ConfigError, match=r"^config key 'cam\.methods': name '\.\./evil' is not allowed; names must"):
        validate_config(cfg, SCHEMA)
    cfg["models"]["shapes_ame"]["methods"] = ["gradcam", "../evil"]
    errors = schema_errors(cfg, load_schema(SCHEMA))
    assert "config key 'models.shapes_ame.methods.1': name '../evil' is not allowed; names must match " \
           "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ (they become file names)" in errors
    del cfg["cam"]["methods"]["../evil"]
    with pytest.raises(ConfigError, match=r"^config key 'models\.shapes_ame\.methods\.1': name '\.\./evil' is not"):
        validate_config(cfg, SCHEMA)


def test_an_empty_standin_means_all_standin_defaults():
    cfg = validate_config(with_change("datasets.shapes.standin", {"kind": "shapes"}), SCHEMA)
    assert cfg["datasets"]["shapes"]["standin"]["counts"] == {"train": 800, "test": 60}


def test_a_missing_data_root_is_reported(tmp_path):
    cfg = copy.deepcopy(DEFAULT)
    cfg["datasets"]["shapes"] = {"root": "no/such/folder"}
    with pytest.raises(ConfigError, match=r"^config key 'datasets\.shapes\.root': folder not found: no/such/folder"):
        validate_config(cfg, SCHEMA, workdir=tmp_path)
