"""The report's provenance section: a self-contained HTML page and CSV tables (rule provenance).

Every value shown comes from the run (config, Snakemake's job records, the outputs' own provenance
attributes) and is escaped: config strings, class names and paths are user text.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd
import yaml

from .provenance import run_provenance
from .utils import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.85em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.6g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if isinstance(value, (list, tuple)):
        return "<td>" + "<br>".join(html.escape(str(v)) for v in value) + "</td>"
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def html_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """An escaped HTML table of dict rows (``columns`` picks and orders them)."""
    if not rows:
        return "<p><em>none</em></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def provenance_html(record: dict) -> str:
    summary = [
        {"item": "git commit (workflow)", "value": record["git_commit"]},
        {"item": "git commits stamped on the outputs", "value": record["output_commits"]},
        {"item": "config hash (sha256 of the canonical JSON, 16 hex)", "value": record["config_hash"]},
        {"item": "generated (UTC)", "value": record["generated"]},
        {"item": "platform", "value": record["platform"]},
        {"item": "devices the jobs ran on", "value": record["devices"]},
        {"item": "CUDA devices visible here", "value": record["cuda"] or "none"},
        {"item": "seed (config)", "value": record["seed"]},
        {"item": "seeds stamped on the outputs", "value": record["output_seeds"]},
    ]
    packages = [{"package": k, "version": v} for k, v in record["packages"].items()]
    checksums = [{"input": k, "sha256": v} for k, v in record["input_checksums"].items()]
    lineage = [dict(job, sha256=(job["sha256"] or "")[:16]) for job in record["lineage"]]
    config_text = yaml.safe_dump(record["config"], sort_keys=False, default_flow_style=None, width=110)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>cambench provenance</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>Provenance of this run</h1>",
        html_table(summary, ["item", "value"]),
        "<h2>Per-rule runtimes</h2>",
        "<p>From Snakemake's job records (start and end of each job).</p>",
        html_table(record["rule_runtimes"], ["rule", "jobs", "total_s", "mean_s", "max_s"]),
        "<h2>Lineage: every figure and table, the rule and inputs that made it</h2>",
        html_table(lineage, ["output", "rule", "inputs", "finished", "seconds", "bytes", "sha256"]),
        "<h2>Data sets</h2>",
        html_table(record["datasets"], ["file", "format", "source_root", "classes", "images", "splits"]),
        "<h2>Input checksums (sha256, as stamped in the outputs)</h2>",
        html_table(checksums, ["input", "sha256"]),
        "<h2>Software</h2>",
        html_table(packages, ["package", "version"]),
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_text)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_provenance(config: dict, outputs: list[str], json_out: str | Path, html_out: str | Path,
                     runtimes_csv: str | Path, lineage_csv: str | Path,
                     benchmarks_dir: str | Path = "results/benchmarks",
                     metadata_dir: str | Path = ".snakemake/metadata") -> dict:
    record = run_provenance(config, outputs, benchmarks_dir, metadata_dir)
    with atomic_path(json_out) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=False, default=str))
    with atomic_path(html_out) as tmp:
        tmp.write_text(provenance_html(record), encoding="utf-8")
    with atomic_path(runtimes_csv) as tmp:
        pd.DataFrame(record["rule_runtimes"], columns=["rule", "jobs", "total_s", "mean_s", "max_s"]).to_csv(
            tmp, index=False)
    rows = [dict(job, inputs=";".join(job["inputs"]), log=";".join(job["log"])) for job in record["lineage"]]
    with atomic_path(lineage_csv) as tmp:
        pd.DataFrame(rows, columns=["output", "rule", "inputs", "log", "started", "finished", "seconds", "bytes",
                                    "sha256"]).to_csv(tmp, index=False)
    return record
