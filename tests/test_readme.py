"""The README's reliability tables list every bad-config and corrupt-input case of the suites."""
import test_config
import test_reliability_data
from reliability_table import config_case_id
from workflow_helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_every_bad_config_is_in_the_readme():
    missing = [config_case_id(p, v) for p, v, _ in test_config.BAD if f"| {config_case_id(p, v)} |" not in README]
    assert not missing, f"add to the README (python tests/reliability_table.py): {missing}"


def test_every_corrupt_input_is_in_the_readme():
    missing = [c[0] for c in test_reliability_data.CASES if f"| `{c[0]}` | {c[1]} |" not in README]
    assert not missing, f"add to the README (python tests/reliability_table.py): {missing}"
