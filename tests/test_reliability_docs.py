"""docs/reliability.md against the suites: its case tables (§3, §4) list exactly the cases of
tests/test_config.py BAD and tests/test_reliability_data.py CASES, and the one identity of §2 that no
method test covers on its own (§2.4, completeness) is checked here."""
import re

import pytest
import test_config
import test_reliability_data
import torch
from reliability_table import config_case_id
from torch import nn
from workflow_helpers import ROOT

import cambench

DOC = ROOT / "docs" / "reliability.md"
HINT = "update docs/reliability.md from `python tests/reliability_table.py`"
CONFIG_HEADER = "| bad config (key: value) | message |"   # the headers reliability_table.py prints
DATA_HEADER = "| case | input | outcome |"


def section(number: int) -> str:
    """The text of `## <number>.` up to the next `## ` heading."""
    text = DOC.read_text()
    found = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, flags=re.M | re.S)
    assert found, f"docs/reliability.md has no section '## {number}.'"
    return found.group(0)


def table_keys(text: str, header: str) -> set[str]:
    """The first cell of every row of the table under ``header`` (the header line reliability_table.py prints)."""
    lines = text.splitlines()
    assert header in lines, f"docs/reliability.md: no table headed {header!r}"
    keys = set()
    for line in lines[lines.index(header) + 2:]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        keys.add(line[2:].split(" | ", 1)[0])
    return keys


def test_every_bad_config_is_in_section_3():
    text = section(3)
    missing = [config_case_id(p, v) for p, v, _ in test_config.BAD if f"| {config_case_id(p, v)} |" not in text]
    assert not missing, f"{HINT}: missing from §3 {missing}"


def test_every_corrupt_input_is_in_section_4():
    text = section(4)
    missing = [c[0] for c in test_reliability_data.CASES if f"| `{c[0]}` | {c[1]} |" not in text]
    assert not missing, f"{HINT}: missing from §4 {missing}"


def test_the_tables_list_no_case_the_suites_lack():
    config_cases = {config_case_id(p, v) for p, v, _ in test_config.BAD}
    data_cases = {f"`{c[0]}`" for c in test_reliability_data.CASES}
    assert table_keys(section(3), CONFIG_HEADER) - config_cases == set(), HINT
    assert table_keys(section(4), DATA_HEADER) - data_cases == set(), HINT


# ------------------------------------------------------------------------------------------------
# docs/reliability.md §2.4: completeness
# ------------------------------------------------------------------------------------------------

class PiecewiseLinearNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> max-pool -> conv -> ReLU -> GAP -> linear: piecewise linear, and
    positively homogeneous in the first conv's output when no layer has a bias."""

    def __init__(self, bias: bool):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU())
        self.fc = nn.Linear(8, 4, bias=bias)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("layer", ["features.0", "features.2"])
def test_completeness_of_a_bias_free_piecewise_linear_network(layer):
    """§2.4: sum over channels and positions of gradient x activation (the signed HiResCAM map) is the
    target logit; the conservation residual is 0. With biases the sum misses the bias terms."""
    torch.manual_seed(0)
    x = 50 * torch.rand(5, 3, 12, 12)  # logits of order 1 (the bias-free net is homogeneous in x too)
    for bias in (False, True):
        torch.manual_seed(1)
        net = PiecewiseLinearNet(bias).eval()
        result = cambench.explain_many(net, x, ["hirescam"], layer)
        total = result.raw["hirescam"].flatten(1).sum(dim=1)
        gap = (total - result.scores).abs().max().item()
        if bias:
            assert gap > 1e-3
            continue
        torch.testing.assert_close(total, result.scores, rtol=1e-5, atol=1e-5)
        residual = cambench.evaluate(net, x, result.maps["hirescam"], "conservation_residual",
                                     targets=result.targets, target_layer=layer, method="hirescam",
                                     method_params={})
        assert residual.abs().max().item() < 1e-4
