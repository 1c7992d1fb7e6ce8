"""A structural fuzz of config/config.yaml: every leaf mutated (wrong type, out-of-range number, unknown
name) must be refused by the config validation the workflow runs before any job, and the message must
name the mutated key. Bounds are declared once, on the registered method / metric / perturbation /
architecture (``bounds=`` of its registration, docs/configuration.md); these tests hold them to it."""
import copy
from pathlib import Path

import pytest
import yaml

from cambench.config import LEVEL_LIMITS, ConfigError, validate_config
from cambench.engine import METHODS
from cambench.metrics import METRICS
from cambench.perturbations import PERTURBATIONS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

# Leaves that accept any value of their type, so a huge negative number is no mistake: none in the
# default config today (every number there has a natural lower bound). Keep this list short.
ANY_NUMBER: set[str] = set()


def leaves(node, path=()):
    """(path, value) of every leaf; a list is a leaf itself (wrong type) and so is each element."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, path + (key,))
        return
    yield path, node
    if isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, path + (i,))


def mutants():
    out = []
    for path, value in leaves(DEFAULT):
        key = ".".join(map(str, path))
        if isinstance(value, bool):
            out.append((key, path, "yes", "wrong type"))
        elif isinstance(value, (int, float)):
            out.append((key, path, "abc", "wrong type"))
            if key not in ANY_NUMBER:
                out.append((key, path, -1e9, "out of range"))
        elif isinstance(value, str):
            out.append((key, path, 123, "wrong type"))
            out.append((key, path, "no_such_name", "unknown name"))
        elif isinstance(value, list):
            out.append((key, path, "abc", "wrong type"))
    return out


MUTANTS = mutants()


def mutate(path, value):
    cfg = copy.deepcopy(DEFAULT)
    node = cfg
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return cfg


def named_keys(path):
    """The key a message may name: the leaf, or (for a list element) the list holding it."""
    keys = [".".join(map(str, path))]
    while path and isinstance(path[-1], int):
        path = path[:-1]
        keys.append(".".join(map(str, path)))
    return keys


def refusal(path, value):
    """The validation's message for a mutant, or None where it was accepted."""
    try:
        validate_config(mutate(path, value), SCHEMA)
    except ConfigError as err:
        return str(err)
    return None


ISSUE_KEYS = ("cam.methods.gradcampp.eps", "cam.methods.xgradcam.eps", "cam.methods.layercam_ms.gamma",
              "cam.methods.finercam.alpha", "cam.methods.micam.bins", "cam.methods.metacam.k",
              "cam.sycam.metric_params.tolerance_px", "perturbations.pgd.params.steps",
              "perturbations.pgd.params.step_ratio", "metrics.compute.deletion_auc.steps",
              "metrics.compute.insertion_auc.steps", "metrics.compute.ablation_area.threshold",
              "metrics.compute.ablation_drop.threshold", "metrics.compute.ablation_flip.threshold",
              "metrics.compute.max_sensitivity.radius", "metrics.compute.max_sensitivity.samples",
              "metrics.compute.pointing_game.tolerance_px", "metrics.compute.iou.fraction",
              "metrics.compute.dice.fraction", "metrics.compute.hd95.fraction", "metrics.compute.box_iou.threshold",
              "cam.methods.layercam_ms.layers.0", "models.shapes_cnn.target_layer", "models.shapes_ame.target_layer")


def test_the_keys_the_issue_names_are_fuzzed_and_refused():
    assert len(MUTANTS) > 250
    for key in ISSUE_KEYS:
        chosen = [(path, value) for k, path, value, _ in MUTANTS if k == key]
        assert chosen, f"{key} is not in the fuzz"
        for path, value in chosen:
            message = refusal(path, value)
            assert message is not None and any(message.startswith(f"config key '{k}'") for k in named_keys(path)), \
                (key, value, message)


@pytest.mark.parametrize("key,path,value,kind", MUTANTS, ids=[f"{k}={v!r}" for k, _, v, _ in MUTANTS])
def test_every_mutant_of_the_default_config_is_refused_naming_its_key(key, path, value, kind):
    message = refusal(path, value)
    assert message is not None, f"{kind} mutant {key} = {value!r} was accepted"
    assert any(message.startswith(f"config key '{k}'") for k in named_keys(path)), message


# Upper ends and integer-ness, which a huge negative number does not reach: (key path, bad value, the
# allowed range the message must state).
UPPER = [
    (("cam", "methods", "metacam", "k"), 150, "(0, 100]"),
    (("cam", "methods", "metacam", "k"), "abc", "'adaptive'"),
    (("cam", "methods", "gradcampp", "eps"), 0, "(0, inf)"),
    (("cam", "methods", "micam", "bins"), 2.5, "an integer"),
    (("perturbations", "pgd", "params", "steps"), 2.5, "an integer"),
    (("perturbations", "pgd", "params", "step_ratio"), 0, "(0, inf)"),
    (("metrics", "compute", "deletion_auc", "steps"), 16.5, "an integer"),
    (("metrics", "compute", "iou", "fraction"), 1.5, "(0, 1]"),
    (("metrics", "compute", "hd95", "fraction"), 1.5, "(0, 1]"),
    (("metrics", "compute", "box_iou", "threshold"), 1.5, "(0, 1]"),
    (("metrics", "compute", "ablation_drop", "threshold"), 1.5, "[0, 1]"),
    (("metrics", "compute", "max_sensitivity", "samples"), 0, "[1, inf)"),
    (("metrics", "compute", "road_morf", "percentiles", 0), 100, "(0, 100)"),
    (("metrics", "compute", "relative_drop", "fractions", 0), 1.5, "(0, 1]"),
    (("cam", "methods", "finercam", "reference_ranks", 0), 0, "[1, inf)"),
    (("cam", "methods", "amecam", "invert"), "maybe", "'auto'"),
]


@pytest.mark.parametrize("path,value,allowed", UPPER, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v, _ in UPPER])
def test_upper_ends_and_integers_are_refused_with_the_allowed_range(path, value, allowed):
    message = refusal(path, value)
    assert message is not None and any(message.startswith(f"config key '{k}'") for k in named_keys(path)), message
    assert allowed in message, message


def test_layer_names_are_resolved_on_the_architecture_before_any_job():
    cfg = mutate(("models", "shapes_cnn", "target_layer"), "features.block9")
    with pytest.raises(ConfigError, match=r"^config key 'models\.shapes_cnn\.target_layer': no layer "
                                          r"'features\.block9' in architecture 'small_cnn' \(no submodule 'block9'"):
        validate_config(cfg, SCHEMA)
    cfg = mutate(("cam", "methods", "layercam_ms", "layers"), ["features.block2", "features.blok3"])
    with pytest.raises(ConfigError, match=r"^config key 'cam\.methods\.layercam_ms\.layers': no layer "
                                          r"'features\.blok3' in architecture 'small_cnn' of model 'shapes_cnn'"):
        validate_config(cfg, SCHEMA)
    # A torchvision architecture is built on the meta device: no weights, no download, no memory.
    cfg = mutate(("models", "shapes_cnn", "architecture"), "resnet18")
    del cfg["models"]["shapes_cnn"]["params"]
    cfg["models"]["shapes_cnn"]["target_layer"] = "net.layer4.1.bn2"
    cfg["cam"]["methods"]["layercam_ms"]["layers"] = ["net.layer3", "net.layer2.-1"]
    validate_config(cfg, SCHEMA)
    cfg["models"]["shapes_cnn"]["target_layer"] = "net.layer5"
    with pytest.raises(ConfigError, match=r"^config key 'models\.shapes_cnn\.target_layer': no layer 'net\.layer5' "
                                          r"in architecture 'resnet18'"):
        validate_config(cfg, SCHEMA)


def test_bounds_are_declared_on_the_registration_and_checked_by_the_library_too():
    # One declaration: the registry refuses the value when the library is called directly, too.
    with pytest.raises(ValueError, match=r"parameter 'eps' of method 'gradcampp' must be a number in \(0, inf\), "
                                         r"got -1\.0"):
        METHODS.get("gradcampp").check_params({"eps": -1.0})
    with pytest.raises(ValueError, match=r"parameter 'steps' of metric 'deletion_auc' must be an integer in "
                                         r"\[1, inf\), got 0"):
        METRICS.get("deletion_auc").check_params({"steps": 0})
    with pytest.raises(ValueError, match=r"parameter 'substrate' of metric 'deletion_auc' must be one of "
                                         r"'mean', 'zero', 'blur', got 'black'"):
        METRICS.get("deletion_auc").check_params({"substrate": "black"})
    # config.LEVEL_LIMITS reads each perturbation's registered max_level instead of a copy.
    assert LEVEL_LIMITS == {k: PERTURBATIONS.get(k).meta["max_level"] for k in PERTURBATIONS.names()
                            if "max_level" in PERTURBATIONS.get(k).meta}
    # A bound naming a parameter the function does not have is a registration error.
    from cambench.registry import Registry
    with pytest.raises(ValueError, match=r"bounds name parameter\(s\) \['epz'\] that 'f' does not take"):
        Registry("method").register("f", bounds={"epz": "(0, inf)"})(lambda x, eps=1.0: x)


def test_the_dry_run_refuses_a_mutant_before_any_job(tmp_path):
    from workflow_helpers import copy_workflow, snakemake
    copy_workflow(tmp_path)
    cfg = mutate(("metrics", "compute", "iou", "fraction"), -1e9)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = snakemake(tmp_path, "-n", "--cores", "1", check=False, timeout=300)
    assert run.returncode != 0
    assert ("invalid config: config key 'metrics.compute.iou.fraction': parameter 'fraction' of metric 'iou' "
            "must be a number in (0, 1], got -1000000000.0") in run.stdout + run.stderr
