"""The docs hold together: docs/configuration.md is what cambench.configdoc writes now, every citation of a
numbered docs section in the code, config and docs names a heading that exists, and every relative
Markdown link points to a file."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cambench import configdoc

ROOT = Path(__file__).resolve().parents[1]
D = "docs" + "/"  # the test strings below are built with it, so this file cites nothing itself

# Where the project cites its docs (`docs/<file>.md §<n>`): folders searched whole, and single files.
CITING = ["src", "rules", "scripts", "tests", "config", "profiles", "reports", "benchmarks", "Snakefile",
          "README.md", "BENCHMARKS.md"]

SECTION = r"§\s?\d+(?:\.\d+)*"
# A citation: the file, then optionally a section and its continuations ('§2.1, §2.9', '§7 to §10').
REFERENCE = re.compile(r"\bdocs/([A-Za-z0-9_-]+)\.md`?((?:[ \t]*" + SECTION + r"(?:[ \t]*(?:,|and|or|to)[ \t]*"
                       + SECTION + r")*)?)")


def references(line: str) -> list[tuple[str, str | None]]:
    """(file stem, section or None) of every docs citation in a line of text."""
    out = []
    for match in REFERENCE.finditer(line):
        sections = re.findall(r"§\s?(\d+(?:\.\d+)*)", match.group(2))
        out += [(match.group(1), s) for s in sections] or [(match.group(1), None)]
    return out


def has_heading(markdown: str, section: str) -> bool:
    """A heading '## 2. Title' or '### 2.11 Title' numbered ``section`` (### 2.1 is no heading 2)."""
    return re.search(r"^#{2,4} " + re.escape(section) + r"\.?(\s|$)", markdown, re.MULTILINE) is not None


def citing_files(root: Path) -> list[Path]:
    files = [p for p in sorted((root / "docs").glob("*.md"))]
    for name in CITING:
        path = root / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
                      and not any(part.endswith(".egg-info") for part in p.parts)
                      and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return files


def _read_text(path: Path) -> str | None:
    """The file's text, or None for a binary file (data, figures, compiled code)."""
    if path.stat().st_size > 5_000_000:
        return None
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def unresolved_references(root: Path) -> list[str]:
    """'file:line: citation (why)' for each citation whose docs file or numbered heading is missing."""
    problems, docs = [], {}
    for path in citing_files(root):
        content = _read_text(path)
        if content is None:
            continue
        for number, line in enumerate(content.splitlines(), 1):
            for stem, section in references(line):
                doc = root / "docs" / f"{stem}.md"
                if stem not in docs:
                    docs[stem] = doc.read_text() if doc.is_file() else None
                cited = f"docs/{stem}.md" + (f" §{section}" if section else "")
                where = f"{path.relative_to(root)}:{number}"
                if docs[stem] is None:
                    problems.append(f"{where}: {cited} (no such file)")
                elif section and not has_heading(docs[stem], section):
                    problems.append(f"{where}: {cited} (no heading '## {section}.' or '### {section}')")
    return problems


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
LINK_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")


def relative_links(markdown: str) -> list[tuple[int, str]]:
    """(line, target) of each relative link in Markdown text, outside code blocks and code spans."""
    out, fenced = [], False
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        targets = [m.group(1) for m in LINK.finditer(line)]
        definition = LINK_DEFINITION.match(line)
        targets += [definition.group(1)] if definition else []
        out += [(number, t) for t in targets if not re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|#)", t)]
    return out


def broken_links(root: Path) -> list[str]:
    problems = []
    for path in [root / "README.md"] + sorted((root / "docs").glob("*.md")):
        if not path.is_file():
            continue
        for number, target in relative_links(path.read_text()):
            file = target.split("#")[0].split("?")[0]
            if not (path.parent / file).exists():
                problems.append(f"{path.relative_to(root)}:{number}: {target}")
    return problems


# ------------------------------------------------------------------------------------------------
# The project's docs
# ------------------------------------------------------------------------------------------------

def test_configuration_reference_is_current(tmp_path):
    # Generated in a fresh process, as `make docs` does: registrations other tests make do not count.
    fresh = tmp_path / "configuration.md"
    subprocess.run([sys.executable, "-m", "cambench.configdoc", "--output", str(fresh)], check=True,
                   capture_output=True)
    written = configdoc.OUTPUT_PATH.read_text() if configdoc.OUTPUT_PATH.is_file() else ""
    assert written == fresh.read_text(), \
        "docs/configuration.md differs from config/schema.yaml and the registries: run make docs"


def test_every_cited_docs_section_exists():
    problems = unresolved_references(ROOT)
    assert not problems, "docs citations that resolve to no file or heading:\n" + "\n".join(problems)


def test_every_relative_link_in_the_docs_points_to_a_file():
    problems = broken_links(ROOT)
    assert not problems, "relative links to missing files:\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------

def test_the_reference_lists_every_top_level_key_in_schema_order_and_the_registered_names():
    import yaml

    from cambench.data import FORMATS
    from cambench.engine import METHODS
    from cambench.metrics import METRICS
    from cambench.models import ARCHITECTURES
    page = configdoc.render()
    schema = yaml.safe_load(configdoc.SCHEMA_PATH.read_text())
    headings = re.findall(r"^## (\d+)\. (\S+)$", page, re.MULTILINE)
    assert headings == [(str(i), key) for i, key in enumerate(schema["properties"], 1)]
    # nested keys with their defaults, registered parameters with theirs
    assert "| `datasets.<name>.standin.counts` | mapping | `{train: 800, test: 60}` |" in page
    assert "| `metrics.compute.pointing_game.tolerance_px` | `15.0` | a number in [0, inf) |" in page
    assert "| `cam.methods.finercam.reference_ranks` | `[1, 2, 3]` |" in page
    assert "| `perturbations.pgd.params.steps` | `10` | an integer in [1, inf) |" in page
    for registry in (FORMATS, ARCHITECTURES, METHODS, METRICS):
        for name in registry.names():
            assert f"\n| `{name}` | " in page, f"{registry.kind} {name} is not listed"
    assert page == configdoc.render()  # deterministic


# ------------------------------------------------------------------------------------------------
# The checkers, on planted text
# ------------------------------------------------------------------------------------------------

def test_references_are_collected_with_their_continuations():
    assert references(f"see {D}methods.md §2.11 and `{D}metrics.md` §7 to §10.") == [
        ("methods", "2.11"), ("metrics", "7"), ("metrics", "10")]
    assert references(f"# ({D}outputs.md §2.1, §2.9; {D}design.md)") == [
        ("outputs", "2.1"), ("outputs", "2.9"), ("design", None)]
    assert references(f"{D}reliability.md §2.13.") == [("reliability", "2.13")]
    assert references(f"{D}<file>.md §<n> and docs.md §2") == []


def test_headings_match_their_number_exactly():
    text = "# Methods\n\n## 2. Methods\n\n### 2.11 MetaCAM\n\n### 13.2 Adversarial\n"
    assert has_heading(text, "2") and has_heading(text, "2.11") and has_heading(text, "13.2")
    assert not has_heading(text, "2.1")       # 2.11 is not 2.1
    assert not has_heading(text, "13")        # nor is 13.2 a heading 13
    assert not has_heading(text, "1")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "methods.md").write_text("# Methods\n\n## 2. Methods\n\n### 2.11 MetaCAM\n")
    (tmp_path / "src").mkdir()
    return tmp_path


def test_a_planted_bad_reference_is_reported_with_its_file_and_line(project):
    (project / "src" / "good.py").write_text(f"# {D}methods.md §2.11\nx = 1  # {D}methods.md §2\n")
    assert unresolved_references(project) == []
    (project / "src" / "bad.py").write_text(f"x = 1\n# {D}methods.md §2, §2.12 and {D}nosuch.md §1\n")
    assert unresolved_references(project) == [
        f"src/bad.py:2: {D}methods.md §2.12 (no heading '## 2.12.' or '### 2.12')",
        f"src/bad.py:2: {D}nosuch.md §1 (no such file)"]
    # a bad citation in a docs page, and one a compiled file would hold, and one in a single named file
    (project / "docs" / "metrics.md").write_text(f"## 1. ROAD\n\nsee {D}methods.md §3\n")
    (project / "src" / "__pycache__").mkdir()
    (project / "src" / "__pycache__" / "bad.pyc").write_text(f"{D}methods.md §9")
    (project / "README.md").write_text(f"Read {D}methods.md §2.11 to §2.12.\n")
    assert unresolved_references(project)[:2] == [
        f"{D}metrics.md:3: {D}methods.md §3 (no heading '## 3.' or '### 3')",
        f"src/bad.py:2: {D}methods.md §2.12 (no heading '## 2.12.' or '### 2.12')"]
    assert unresolved_references(project)[-1] == f"README.md:1: {D}methods.md §2.12 (no heading '## 2.12.' or " \
                                                 f"'### 2.12')"
    assert len(unresolved_references(project)) == 4


def test_relative_links_are_checked_outside_code(project):
    (project / "README.md").write_text(
        f"See [methods]({D}methods.md#2-methods), [web](https://example.org), [top](#top),\n"
        f"`[not a link](nowhere.md)` and\n```\n[nor this](nowhere.md)\n```\n"
        f"[missing]({D}missing.md) ![figure]({D}fig.png)\n[ref]: {D}gone.md\n")
    assert relative_links((project / "README.md").read_text()) == [
        (1, f"{D}methods.md#2-methods"), (6, f"{D}missing.md"), (6, f"{D}fig.png"), (7, f"{D}gone.md")]
    assert broken_links(project) == [f"README.md:6: {D}missing.md", f"README.md:6: {D}fig.png",
                                     f"README.md:7: {D}gone.md"]
    (project / "docs" / "fig.png").write_bytes(b"\x89PNG")
    (project / "docs" / "metrics.md").write_text("[back](methods.md) [up](../README.md) [x](../nope.md)\n")
    assert broken_links(project) == [f"README.md:6: {D}missing.md", f"README.md:7: {D}gone.md",
                                     f"{D}metrics.md:1: ../nope.md"]


def registered_our_reading(text: str) -> set[str]:
    """Names in the first column of docs/methods.md §6's table."""
    section = text.split("## 6.", 1)[1].split("\n## ", 1)[0]
    return {name for line in section.splitlines() if line.startswith("| `")
            for name in re.findall(r"`([a-z0-9_]+)`", line.split("|")[1])}


def test_every_method_and_metric_flagged_as_our_reading_is_listed_in_the_methods_doc():
    """The verdict's caveats come from the registrations' ``our_reading`` flag; docs/methods.md §6 says
    what each one's reading is, so a flag without a line there (or a renamed entry) fails."""
    from cambench.verdict import our_reading
    listed = registered_our_reading((ROOT / "docs" / "methods.md").read_text())
    assert our_reading() and not our_reading() - listed, sorted(our_reading() - listed)
    assert "sycam" in listed and "pointing_game" in listed and "gradcam" not in listed
