"""Which methods read the target, and Finer-CAM refusing bases that do not (issue 20, item 6)."""
import copy
import re
from pathlib import Path

import pytest
import yaml

import cambench  # noqa: F401  (registers the methods)
from cambench.config import ConfigError, validate_config
from cambench.engine import METHODS, CamError, normalise_method_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config" / "schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

# Bases whose map does not depend on the target score: Finer-CAM on them would be the plain base.
BLIND = [("cam", None), ("eigencam", None), ("micam", None), ("scorecam", {"variant": "official"}),
         ("metacam", None), ("metacam", {"components": ["gradcam", "scorecam"]}),
         ("sycam", {"expression": "act_mean * 2"}), ("amecam", None)]
READING = [("gradcam", None), ("eigengradcam", None), ("scorecam", None), ("scorecam", {"variant": "torchcam"}),
           ("ablationcam", None), ("cfcam", None), ("sycam", {"expression": "relu(gradcam) * act_mean"}),
           ("amecam", {"invert": "auto"})]


def test_every_registered_method_declares_whether_it_reads_the_target():
    undeclared = [name for name in METHODS.names() if "reads_target" not in METHODS.get(name).meta]
    assert undeclared == []


def _spec(base, base_params):
    return {"method": "finercam", "base": base, **({"base_params": base_params} if base_params else {})}


@pytest.mark.parametrize("base,base_params", BLIND)
def test_engine_refuses_finercam_on_a_base_that_ignores_the_target(base, base_params):
    with pytest.raises(CamError) as err:
        normalise_method_spec({"finer_x": _spec(base, base_params)})
    text = str(err.value)
    assert text.startswith("method 'finer_x': finercam cannot use base ")
    assert f"base '{base}'" in text and "does not read the target" in text
    if base_params and base == "scorecam":
        assert "'variant': 'official'" in text


@pytest.mark.parametrize("base,base_params", READING)
def test_engine_accepts_finercam_on_a_base_that_reads_the_target(base, base_params):
    assert normalise_method_spec({"finer_x": _spec(base, base_params)})["finer_x"]["base"] == base


@pytest.mark.parametrize("base,base_params", [b for b in BLIND if b[0] != "amecam"])
def test_config_validation_refuses_it_naming_the_label_and_the_base(base, base_params):
    cfg = copy.deepcopy(DEFAULT)
    cfg["cam"]["methods"]["finer_x"] = _spec(base, base_params)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA)
    text = str(err.value)
    assert re.match(rf"config key 'cam\.methods\.finer_x(\.base)?': finercam cannot use base '{base}'", text), text
    assert "does not read the target" in text
