"""Print the tables of docs/reliability.md §3 (bad configuration) and §4 (corrupt input) from the test
suites' own case lists (tests/test_config.py BAD, tests/test_reliability_data.py CASES), with the messages
the code gives:  python tests/reliability_table.py > /tmp/tables.md, then paste each table into its section.

tests/test_reliability_docs.py checks that docs/reliability.md lists every case in its section, so a new
case cannot go unlisted."""
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_config  # noqa: E402
import test_reliability_data  # noqa: E402

from cambench.config import ConfigError, validate_config  # noqa: E402


def config_case_id(path, value) -> str:
    return f"`{path}: {value!r}`"


def cell(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def config_rows():
    for path, value, _ in test_config.BAD:
        try:
            validate_config(test_config.with_change(path, value), test_config.SCHEMA)
        except ConfigError as err:
            yield config_case_id(path, value), cell(err)
        else:
            raise SystemExit(f"config case {path}={value!r} was accepted")


def data_rows():
    for case_id, description, build, call, error, _ in test_reliability_data.CASES:
        with tempfile.TemporaryDirectory() as tmp:
            built = build(Path(tmp))
            try:
                call(built)
            except error as err:
                message = re.sub(re.escape(tmp) + "/?", "", str(err))
                yield f"`{case_id}`", description, cell(f"{type(err).__name__}: {message}")
            else:
                raise SystemExit(f"data case {case_id} raised nothing")


def main():
    print("| bad config (key: value) | message |\n|---|---|")
    for key, message in config_rows():
        print(f"| {key} | {message} |")
    print("\n| case | input | outcome |\n|---|---|---|")
    for case_id, description, message in data_rows():
        print(f"| {case_id} | {description} | {message} |")


if __name__ == "__main__":
    main()
