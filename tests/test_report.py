"""The provenance section: Snakemake job records, embedded provenance, escaped HTML."""
import base64
import json
from html.parser import HTMLParser

import h5py
import numpy as np
import pandas as pd

from cambench.provenance import (
    embedded_provenance,
    lineage,
    rule_runtimes,
    run_provenance,
    sha256_file,
    snakemake_record,
)
from cambench.report import html_table, write_provenance

HOSTILE = '<img src=x onerror="window.__pwned=1">&<script>window.__pwned=2</script>'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _parse(text):
    parser = Tags()
    parser.feed(text)
    return parser


def _record(metadata, output, **fields):
    """A job record where Snakemake's file persistence keeps it (url-safe base64, long names split)."""
    b64 = base64.urlsafe_b64encode(output.encode()).decode()
    parts = [b64[i:i + 254] for i in range(0, len(b64), 254)]
    path = metadata.joinpath(*["@" + p for p in parts[:-1]], parts[-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


def test_snakemake_records_are_found_also_for_long_paths(tmp_path):
    short, long = "results/a.csv", "results/" + "x" * 300 + ".csv"
    _record(tmp_path, short, rule="stats", input=["results/m.parquet"], starttime=10.0, endtime=12.5)
    _record(tmp_path, long, rule="figs", input=[], starttime=1.0, endtime=2.0)
    assert snakemake_record(short, tmp_path)["rule"] == "stats"
    assert snakemake_record(long, tmp_path)["rule"] == "figs"
    assert snakemake_record("results/none.csv", tmp_path) is None


def test_lineage_and_runtimes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = tmp_path / ".snakemake/metadata"
    for name, rule, start, end, source in [("a.csv", "stats", 0.0, 2.0, "in.parquet"),
                                           ("b.csv", "stats", 5.0, 9.0, "in.parquet"),
                                           ("c.png", "plot", 1.0, 1.5, "in.parquet"),
                                           ("d.png", "plot", 1.0, 1.5, "in.parquet"),
                                           ("e.h5", "join", 3.0, 3.2, "e/shard-0.h5"),
                                           ("f.h5", "join", 3.0, 3.2, "f/shard-0.h5")]:
        (tmp_path / name).write_text(name)
        _record(meta, name, rule=rule, input=[source], starttime=start, endtime=end)
    (tmp_path / "orphan.txt").write_text("made by hand")
    jobs = lineage(["a.csv", "b.csv", "c.png", "d.png", "e.h5", "f.h5", "orphan.txt"], meta)
    by = {j["output"]: j for j in jobs}
    assert by["a.csv"]["rule"] == "stats" and by["a.csv"]["seconds"] == 2.0 and by["a.csv"]["inputs"] == ["in.parquet"]
    assert by["a.csv"]["sha256"] == sha256_file("a.csv") and by["a.csv"]["bytes"] == 5
    assert by["orphan.txt"]["rule"] == "unknown" and by["orphan.txt"]["seconds"] is None
    runtimes = {r["rule"]: r for r in rule_runtimes(jobs)}
    assert runtimes["stats"] == {"rule": "stats", "jobs": 2, "total_s": 6.0, "mean_s": 3.0, "max_s": 4.0}
    assert runtimes["plot"]["jobs"] == 1  # one job with two outputs counts once
    assert runtimes["join"]["jobs"] == 2  # two jobs that started and ended in the same second count twice
    assert list(runtimes) == ["stats", "plot", "join"]  # most time first


def test_embedded_provenance_is_json_never_evaluated(tmp_path):
    good, evil, table = tmp_path / "good.h5", tmp_path / "evil.h5", tmp_path / "t.parquet"
    with h5py.File(good, "w") as f:
        f.attrs["provenance"] = json.dumps({"seed": 3, "device": "cpu", "inputs": {"x": "ab"}})
    marker = tmp_path / "executed"
    with h5py.File(evil, "w") as f:
        f.attrs["provenance"] = f"__import__('pathlib').Path({str(marker)!r}).write_text('1')"
    df = pd.DataFrame({"v": [1.0]})
    df.attrs["provenance"] = json.dumps({"seed": 4})
    df.to_parquet(table)
    assert embedded_provenance(good)["seed"] == 3
    assert embedded_provenance(evil) is None and not marker.exists()
    assert embedded_provenance(table) == {"seed": 4}
    assert embedded_provenance(tmp_path / "missing.h5") is None


def test_provenance_html_escapes_user_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with h5py.File("dataset.h5", "w") as f:
        f.create_dataset("labels", data=np.zeros(3, dtype=np.int64))
        f.attrs["class_names"] = json.dumps([HOSTILE, "b"])
        f.attrs["splits"] = json.dumps(["test"])
        f.attrs["format"] = "imagefolder"
        f.attrs["source_root"] = HOSTILE
        f.attrs["provenance"] = json.dumps({"seed": 0, "inputs": {HOSTILE: "00"}, "device": HOSTILE})
    config = {"seed": 0, "datasets": {"d": {"root": HOSTILE}}}
    out = tmp_path / "out"
    record = write_provenance(config, ["dataset.h5"], out / "p.json", out / "p.html", out / "r.csv", out / "l.csv")
    page = (out / "p.html").read_text()
    parsed = _parse(page)
    assert "img" not in parsed.tags and parsed.tags.count("script") == 0
    text = "".join(parsed.text)
    assert text.count(HOSTILE) >= 4  # classes, source root, checksum key, device, config: shown literally
    assert record["datasets"][0]["classes"] == [HOSTILE, "b"]
    assert json.loads((out / "p.json").read_text())["config_hash"] == record["config_hash"]
    assert pd.read_csv(out / "l.csv")["output"].tolist() == ["dataset.h5"]


def test_html_table_cells():
    page = html_table([{"a": 1.23456789, "b": ["x", "<y>"], "c": None}], ["a", "b", "c"])
    assert '<td class="num">1.23457</td>' in page and "x<br>&lt;y&gt;" in page and "<td></td>" in page
    assert html_table([]) == "<p><em>none</em></p>"


def test_run_provenance_collects_devices_seeds_and_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, seed, device in [("a.h5", 1, "cpu (x86_64)"), ("b.h5", 2, "cuda:0 NVIDIA H200")]:
        with h5py.File(name, "w") as f:
            f.attrs["provenance"] = json.dumps({"seed": seed, "device": device, "inputs": {f"in_{name}": "ff"},
                                                "git_commit": "abc"})
    record = run_provenance({"seed": 7}, ["a.h5", "b.h5"], benchmarks_dir="nowhere")
    assert record["devices"] == ["cpu (x86_64)", "cuda:0 NVIDIA H200"] and record["output_seeds"] == [1, 2]
    assert record["input_checksums"] == {"in_a.h5": "ff", "in_b.h5": "ff"} and record["seed"] == 7
    assert record["output_commits"] == ["abc"] and record["benchmarks"] == []
    assert {"torch", "numpy", "python"} <= set(record["packages"])
