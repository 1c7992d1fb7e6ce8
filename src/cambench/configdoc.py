"""docs/configuration.md, generated from config/schema.yaml and the registries: ``python -m cambench.configdoc``
(``make docs``). tests/test_docs.py fails when the file differs from what this module writes.

The schema gives every key its type, default and description; the names that keys take (formats,
architectures, CAM methods, perturbation kinds, metrics) and the parameters of each, with their defaults
and bounds, come from the registries, so the page lists what the code registers and nothing kept by hand.
The output depends only on the schema and the registries (no dates, no paths, names sorted).
"""
from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import yaml

from .registry import check_bound, param_kind

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "config" / "schema.yaml"
OUTPUT_PATH = ROOT / "docs" / "configuration.md"

# What stands for a user-chosen name in a dotted key path, by the path of the mapping holding the names.
PLACEHOLDERS = {"datasets": "<name>", "models": "<name>", "cam.methods": "<label>", "metrics.compute": "<metric>",
                "perturbations": "<kind>", "datasets.<name>.standin.counts": "<split>", "papers.models": "<paper>"}

# Descriptions of the keys the schema describes on their parent only (the entries of a name -> value mapping).
NOTES = {
    "datasets.<name>": "One data set; its name becomes a folder name (results/<name>/).",
    "datasets.<name>.standin.counts.<split>": "Items per class (or in total, see counts) of this split.",
    "models.<name>": "One model; its name becomes a folder name (results/<dataset>/<name>/).",
    "cam.methods.<label>": "Parameters of one method run (null or {} = the method's defaults); "
                           "{method: <registered name>, ...} runs a method under another label.",
    "perturbations.<kind>": "The severity levels of one kind (each > 0 and at most its max_level), "
                            "or {levels, params}.",
    "metrics.compute.<metric>": "Parameters of one metric (null or {} = its defaults).",
    "papers.models.<paper>": "The models that paper's table uses.",
}


def _quote(value) -> str:
    """A value as it is written in the YAML config (flow style)."""
    if value is inspect.Parameter.empty:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # quoted only where YAML would read it as something else
        return value if value and yaml.safe_load(value) == value and ": " not in value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_quote(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_quote(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def code(text: str) -> str:
    """Inline code; a pipe would end the table cell even inside backticks (GitHub tables)."""
    return "`" + str(text).replace("|", "\\|") + "`"


def text(value: str) -> str:
    """Prose for a table cell or paragraph: one line, pipes escaped, and outside code spans the characters
    Markdown would take as HTML tags or emphasis (<root>, *.jpg) escaped."""
    parts = " ".join(str(value).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside backticks
        parts[i] = parts[i].replace("<", "\\<").replace("*", "\\*")
    return "`".join(parts)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(row) + " |" for row in rows] + [""]


# ------------------------------------------------------------------------------------------------
# The schema: one row per key
# ------------------------------------------------------------------------------------------------

def _resolve(node: dict, schema: dict) -> dict:
    ref = node.get("$ref")
    if not ref:
        return node
    target = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


_PLURAL = {"integer": "integers", "number": "numbers", "string": "strings", "mapping": "mappings",
           "boolean": "booleans", "list": "lists"}


def type_text(node: dict, schema: dict) -> str:
    """What a key accepts, from its schema: type, bounds, allowed values, pattern, size."""
    node = _resolve(node, schema)
    if "oneOf" in node:
        return " or ".join(type_text(alt, schema) for alt in node["oneOf"])
    types = node.get("type", [])
    names = []
    for kind in types if isinstance(types, list) else [types]:
        if kind == "array" and "items" in node:
            first, _, rest = type_text(node["items"], schema).partition(" ")
            names.append(f"list of {_PLURAL.get(first, first)}{' ' + rest if rest else ''}")
        else:
            names.append({"array": "list", "object": "mapping"}.get(kind, kind))
    out = " or ".join(names)
    limits = [f"{sign} {_quote(node[key])}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                                ("maximum", "≤"), ("exclusiveMaximum", "<"))
              if key in node]
    if limits:
        out += " " + ", ".join(limits)
    if "enum" in node:
        out += (": " if out else "") + "one of " + ", ".join(code(_quote(v)) for v in node["enum"])
    if "pattern" in node:
        out += f" matching {code(node['pattern'])}"
    size = [f"at least {node[k]} {'entries' if k == 'minProperties' else 'items'}"
            for k in ("minItems", "minProperties") if node.get(k, 0) > 1]
    size += ["not empty" for k in ("minItems", "minProperties") if node.get(k) == 1]
    size += [f"at most {node['maxItems']} items"] if "maxItems" in node else []
    size += ["no repeats"] if node.get("uniqueItems") else []
    return out + (f" ({', '.join(size)})" if size else "")


def schema_rows(node: dict, path: str, schema: dict) -> list[tuple[str, dict]]:
    """(dotted path, schema node) of ``node``'s keys, depth first in schema order; the entries of a
    name -> value mapping appear once, under a placeholder (``datasets.<name>.format``)."""
    node = _resolve(node, schema)
    rows = []
    for key, sub in node.get("properties", {}).items():
        rows.append((f"{path}.{key}" if path else key, sub))
        rows += schema_rows(sub, f"{path}.{key}" if path else key, schema)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and path:
        name = f"{path}.{PLACEHOLDERS.get(path, '<name>')}"
        rows.append((name, extra))
        rows += schema_rows(extra, name, schema)
    for alt in _resolve(node, schema).get("oneOf", []):  # a value that may also be a mapping: its keys
        rows += schema_rows(alt, path, schema)
    return rows


# ------------------------------------------------------------------------------------------------
# The registries: names, and parameters with defaults and bounds
# ------------------------------------------------------------------------------------------------

def allowed_text(entry, name: str, default) -> str:
    """What a registered parameter accepts: its declared bound, else the type its default implies."""
    bound = (entry.meta.get("bounds") or {}).get(name)
    if bound is not None:
        return text(check_bound(bound, None))  # the phrase the config error uses ('a number in (0, inf)')
    kind = param_kind(default)
    return kind[0] if kind else "any"


def parameter_rows(entries, key: str) -> list[list[str]]:
    """One row per parameter of each entry: [key, default, allowed], the entry's name filled into the key
    where the key holds it (``metrics.compute.{name}.{param}``), else in a first column of its own."""
    rows = []
    for entry, params in entries:
        for name, default in params.items():
            row = [code(key.format(name=entry.name, param=name)), code(_quote(default)),
                   allowed_text(entry, name, default)]
            rows.append(row if "{name}" in key else [code(entry.name)] + row)
    return rows


def _no_parameters(entries, what: str) -> list[str]:
    bare = [code(entry.name) for entry, params in entries if not params]
    return [f"{what} without parameters: {', '.join(bare)}.", ""] if bare else []


def _formats() -> list[str]:
    from .data import FORMATS
    rows = []
    for name in FORMATS.names():
        meta = FORMATS.get(name).meta
        dims = meta["dims"] if not callable(meta["dims"]) else "by options"
        rows.append([code(name), text(meta["summary"]), code(meta["layout"]), f"{meta['splits']}", f"{dims}"])
    return (["The values of `datasets.<name>.format` (docs/datasets.md §1 describes each). Splits: *native* "
             "where the layout names them, *assigned* where the reader draws train and test "
             "(options.test_fraction). Items: 2 (images) or 3 (volumes) spatial dimensions.", ""]
            + table(["Format", "What", "Layout", "Splits", "Items"], rows))


def _format_options() -> list[str]:
    from .data import FORMATS
    entries = [(FORMATS.get(name), FORMATS.get(name).parameters()) for name in FORMATS.names()]
    return (["The reader options of each format, in `datasets.<name>.options` (the data set's own name in place "
             "of `<name>`).", ""]
            + table(["Format", "Key", "Default", "Allowed"], parameter_rows(entries, "datasets.<name>.options.{param}"))
            + _no_parameters(entries, "Formats"))


def _standins() -> list[str]:
    from .config import standin_params
    from .data import FORMATS, SHAPES, STANDIN_FORMATS
    kinds = [[code("none"), "—", "reads the real data in `root`"]]
    kinds += [[code(kind), code(STANDIN_FORMATS[kind]),
               "shapes on clutter and noise, class folders (keys in `standin` itself)" if kind == "shapes"
               else text(FORMATS.get(STANDIN_FORMATS[kind]).meta["summary"])] for kind in sorted(STANDIN_FORMATS)]
    rows = [[code(kind), code(f"datasets.<name>.standin.params.{param}"), code(_quote(default)),
             (param_kind(default) or ("any",))[0]]
            for kind in sorted(STANDIN_FORMATS) if kind != "shapes"
            for param, default in standin_params(kind).items()]
    return (["The values of `datasets.<name>.standin.kind` and the format each stand-in is written in. The "
             f"shapes stand-in's classes: {', '.join(code(s) for s in SHAPES)}.", ""]
            + table(["Kind", "Format", "What"], kinds)
            + ["The parameters of the other stand-ins, in `datasets.<name>.standin.params`:", ""]
            + table(["Stand-in", "Key", "Default", "Accepts"], rows))


def _architectures() -> list[str]:
    from .models import ARCHITECTURES
    rows = []
    for name in ARCHITECTURES.names():
        arch = ARCHITECTURES.get(name)
        dims = arch.meta.get("dims", arch.parameters().get("dims"))
        rows.append([code(name), text(arch.meta.get("summary", "")), f"{dims}D",
                     code(arch.meta.get("default_target_layer", ""))])
    entries = [(ARCHITECTURES.get(name), ARCHITECTURES.get(name).parameters()) for name in ARCHITECTURES.names()]
    return (["The values of `models.<name>.architecture` besides `module:function` (docs/models.md §1).", ""]
            + table(["Architecture", "What", "Inputs", "Default target layer"], rows)
            + ["Their parameters, in `models.<name>.params`:", ""]
            + table(["Architecture", "Key", "Default", "Allowed"],
                    parameter_rows(entries, "models.<name>.params.{param}")))


def _methods() -> list[str]:
    from . import methods as _registers  # noqa: F401  (registers the CAM methods)
    from .engine import METHODS
    rows = [[code(name), text(METHODS.get(name).meta.get("summary", ""))] for name in METHODS.names()]
    entries = [(METHODS.get(name), METHODS.get(name).parameters()) for name in METHODS.names()]
    return (["The registered CAM methods: the labels of `cam.methods`, or the `method` of a label "
             "(docs/methods.md §2 describes each).", ""]
            + table(["Method", "What"], rows)
            + ["Their parameters, under the method's label (here its name) in `cam.methods`:", ""]
            + table(["Key", "Default", "Allowed"], parameter_rows(entries, "cam.methods.{name}.{param}"))
            + _no_parameters(entries, "Methods"))


def _perturbations() -> list[str]:
    from .perturbations import PERTURBATIONS, perturbation_params
    rows = []
    for name in [n for n in PERTURBATIONS.names() if n != "none"]:  # the clean images: no key of its own
        meta = PERTURBATIONS.get(name).meta
        rows.append([code(name), text(meta.get("summary", "")), code(_quote(meta["max_level"])) if "max_level" in
                     meta else "—", ", ".join(meta.get("needs", ())) or "—"])
    entries = [(PERTURBATIONS.get(name), perturbation_params(name)) for name in PERTURBATIONS.names()
               if perturbation_params(name)]
    return (["The keys of `perturbations` (docs/metrics.md §13); `none`, the clean images, is always included. "
             "Levels lie in (0, max_level].", ""]
            + table(["Kind", "What", "max_level", "Needs"], rows)
            + ["The kinds that take parameters, in `perturbations.<kind>.params`:", ""]
            + table(["Key", "Default", "Allowed"], parameter_rows(entries, "perturbations.{name}.params.{param}")))


def _metrics() -> list[str]:
    from .metrics import METRICS
    rows = []
    for name in METRICS.names():
        meta = METRICS.get(name).meta
        better = {True: "higher", False: "lower", None: "—"}[meta.get("higher_is_better")]
        rows.append([code(name), text(meta.get("summary", "")), meta.get("family", "—"), better,
                     ", ".join(meta.get("needs", ())) or "—"])
    entries = [(METRICS.get(name), METRICS.get(name).parameters()) for name in METRICS.names()]
    return (["The registered metrics: the keys of `metrics.compute`, and the names `cam.sycam.metric`, "
             "`stats.mixed_model_metrics`, `report.curve_metrics` and `report.cd_metrics` take (docs/metrics.md "
             "§15: families and directions). Better: the direction the statistics rank by (— : none).", ""]
            + table(["Metric", "What", "Family", "Better", "Needs"], rows)
            + ["Their parameters, in `metrics.compute.<metric>` (and `cam.sycam.metric_params`):", ""]
            + table(["Key", "Default", "Allowed"], parameter_rows(entries, "metrics.compute.{name}.{param}"))
            + _no_parameters(entries, "Metrics"))


def _papers() -> list[str]:
    from .papers import PAPERS
    rows = [[code(key), text(paper.citation), text(paper.what)] for key, paper in PAPERS.items()]
    return (["The keys of `papers.include` and `papers.models` (docs/papers.md).", ""]
            + table(["Paper", "Citation", "Figure or table type"], rows))


# Subsections listing registered names, by top-level key: (id, title, writer).
REGISTRY_SECTIONS = {
    "datasets": [("formats", "Formats", _formats), ("options", "Format options", _format_options),
                 ("standins", "Stand-ins", _standins)],
    "models": [("architectures", "Architectures", _architectures)],
    "cam": [("methods", "Methods", _methods)],
    "perturbations": [("perturbations", "Perturbation kinds", _perturbations)],
    "metrics": [("metrics", "Metrics", _metrics)],
    "papers": [("papers", "Papers", _papers)],
}

# Keys whose values are registered names, and the subsection listing them.
NAMES = {
    "datasets.<name>.format": "formats", "datasets.<name>.options": "options",
    "datasets.<name>.standin": "standins", "datasets.<name>.standin.kind": "standins",
    "datasets.<name>.standin.params": "standins", "datasets.<name>.standin.classes": "standins",
    "models.<name>.architecture": "architectures", "models.<name>.params": "architectures",
    "cam.methods": "methods", "cam.methods.<label>": "methods", "papers.metacam.components": "methods",
    "cam.sycam.metric": "metrics", "cam.sycam.metric_params": "metrics", "metrics.compute": "metrics",
    "metrics.compute.<metric>": "metrics", "stats.mixed_model_metrics": "metrics",
    "report.curve_metrics": "metrics", "report.cd_metrics": "metrics",
    "perturbations.<kind>": "perturbations", "perturbations.<kind>.params": "perturbations",
    "papers.include": "papers", "papers.models": "papers", "papers.models.<paper>": "papers",
}


def _inline_names(path: str) -> str:
    """Short name lists that have no subsection of their own."""
    if path == "cam.sycam.terminals":
        from .sycam import TERMINALS
        return "Terminals: " + ", ".join(code(t) for t in TERMINALS) + "."
    return ""


def render(schema_path: str | Path = SCHEMA_PATH) -> str:
    """The whole page."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    top = list(schema["properties"])
    numbers = {sid: f"{top.index(key) + 1}.{j}" for key, subs in REGISTRY_SECTIONS.items()
               for j, (sid, _, _) in enumerate(subs, 1)}
    out = ["# Configuration reference", "",
           "*Generated from `config/schema.yaml` and the registries (`python -m cambench.configdoc`); do not edit "
           "by hand, regenerate with `make docs`.*", "",
           text(schema.get("description", "")), "",
           "The workflow validates the config before any job: the schema (which also fills in the defaults "
           "below), then the names and parameters the registries know. Each error names its key. Keys are "
           "written as dotted paths; `<name>`, `<label>`, `<metric>`, `<kind>`, `<split>` and `<paper>` stand for "
           "names you choose or registered names. One section per top-level key:", ""]
    out += [", ".join(f"{i}. `{key}`" for i, key in enumerate(top, 1)), ""]
    for i, key in enumerate(top, 1):
        node = schema["properties"][key]
        out += [f"## {i}. {key}", "", text(node.get("description", "")), "",
                f"Type: {type_text(node, schema)}. Default: {code(_quote(node.get('default')))}.", ""]
        rows = []
        for path, sub in schema_rows(node, key, schema):
            description = text(sub.get("description") or NOTES.get(path, ""))
            if path in NAMES:
                description += f" Registered names: §{numbers[NAMES[path]]}."
            inline = _inline_names(path)
            description += f" {inline}" if inline else ""
            default = code(_quote(sub["default"])) if "default" in sub else "—"
            rows.append([code(path), type_text(sub, schema), default, description.strip()])
        if rows:
            out += table(["Key", "Type", "Default", "Description"], rows)
        for j, (_, title, writer) in enumerate(REGISTRY_SECTIONS.get(key, []), 1):
            out += [f"### {i}.{j} {title}", ""] + writer()
    while out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write docs/configuration.md from config/schema.yaml.")
    parser.add_argument("--schema", default=str(SCHEMA_PATH))
    parser.add_argument("--output", default=str(OUTPUT_PATH))
    args = parser.parse_args(argv)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(render(args.schema))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
