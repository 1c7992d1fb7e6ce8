"""The report's answer (rule verdict) and the report's size budget (rules gallery, report_tables).

Verdict, per dataset x model x metric family (docs/statistics.md §6), on the clean images
(robustness also at each perturbation kind's strongest level, where the clean-vs-perturbed metrics
exist):

- **Best**: the methods with the lowest mean *normalised rank* over the family's metrics that have a
  better direction. Per metric the methods are ranked by their mean (metric_summary.csv; 1 = best,
  ties averaged) and the rank is scaled to [0, 1] ((rank - 1) / (k - 1), k methods with a value), so
  that a metric some methods lack (the sensitivity axioms: channel-weight methods only) weighs the
  same for every method. Score 0 = best on every metric of the family, 1 = worst on every one.
- **Not significantly different** from the best: every method whose post-hoc test against it
  (posthoc.csv, Wilcoxon signed-rank, images as blocks: ``design`` paired; ``p_adj`` Holm within the
  block's pairs: ``family`` block) has ``p_adj >= alpha`` or no test on every metric of the family.
  Methods the test finds significantly *better* than the best on some metric are listed too
  (``better_somewhere``): there the family's metrics disagree, and one rank cannot say it all.
- **Identical maps**: methods whose clean maps agree within ``IDENTITY_TOL`` on every image (read from
  the heatmap files), named with the reason where it is a known identity.
- **Caveats**: stand-in data, few images, methods and metrics that are our reading.

Size budget: Snakemake embeds every report() file as base64 (4/3 of its bytes). ``report.budget_mb``
is split into fixed shares: galleries ``GALLERY_SHARE`` (each gallery at most ``MAX_GALLERY_BYTES``,
JPEG, reduced until it fits), tables ``TABLE_SHARE`` (zipped; excerpts where the full tables do not
fit), the rest for Snakemake's own page (about 3 MB) and the other figures.
"""
from __future__ import annotations

import html
import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .engine import METHODS, method_of
from .metrics import METRICS
from .report import STYLE, html_table
from .store import read_heatmaps
from .utils import atomic_path

log = logging.getLogger(__name__)

FAMILIES = ("faithfulness", "localisation", "robustness", "complexity", "sanity", "axioms")
CLEAN = ("none", 0.0)
IDENTITY_TOL = 1e-3          # float16 maps in [0, 1] store 2^-11 steps: two roundings of one map stay within 1e-3
FEW_IMAGES = 30              # below this many images a 95 % CI is wide and a paired test weak
TEST = "wilcoxon"
# The GAP + linear head identity (docs/reliability.md §2.1)
GAP_IDENTITY = {"cam", "gradcam", "xgradcam", "hirescam"}
VERDICT_COLUMNS = ["dataset", "model", "perturbation", "level", "metric_family", "metrics", "best", "score",
                   "n_metrics", "best_values", "not_different", "different", "better_somewhere", "test", "design",
                   "p_adj_family", "alpha", "n_images", "identical_maps", "caveats"]

EMBED_FACTOR = 4 / 3         # base64 data URIs
GALLERY_SHARE, TABLE_SHARE = 0.5, 0.2
MAX_GALLERY_BYTES = 1_500_000


# ------------------------------------------------------------------------------------ size budget

def report_levels(sweep, per_kind: int) -> list[tuple[str, float]]:
    """The (kind, level) pairs shown in the report: the clean images, and per perturbation kind up to
    ``per_kind`` of its levels spread evenly from the weakest to the strongest (1: the strongest
    alone). ``sweep``: (kind, level) pairs, as in rules/common.smk; order kept."""
    if per_kind < 0:
        raise ValueError(f"report.gallery_levels must be >= 0, got {per_kind}")
    levels: dict[str, list[float]] = {}
    for kind, level in sweep:
        if kind != "none":
            levels.setdefault(kind, []).append(float(level))
    chosen = {CLEAN}
    for kind, values in levels.items():
        values = sorted(set(values))
        k = min(per_kind, len(values))
        picks = [len(values) - 1] if k == 1 else np.round(np.linspace(0, len(values) - 1, k)).astype(int)
        chosen |= {(kind, values[i]) for i in picks} if k else set()
    return [(kind, float(level)) for kind, level in sweep if (kind, float(level)) in chosen]


def gallery_byte_cap(budget_mb: float, n_galleries: int) -> int:
    """File bytes one gallery may take: its share of the galleries' part of the budget."""
    share = budget_mb * 1e6 * GALLERY_SHARE / EMBED_FACTOR / max(n_galleries, 1)
    return int(min(MAX_GALLERY_BYTES, share))


def table_byte_budget(budget_mb: float) -> int:
    """Zipped bytes all the report's tables may take together."""
    return int(budget_mb * 1e6 * TABLE_SHARE / EMBED_FACTOR)


def _zipped(name: str, text: str, note: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(f"{name}.csv", text)
        if note:
            z.writestr("README.txt", note + "\n")
    return buffer.getvalue()


class _Table:
    """One CSV and the shrinking versions of it the budget may need: full, the report's levels, clean."""

    def __init__(self, name: str, csv: str | Path, keep_levels):
        self.name, self.csv = name, Path(csv)
        self.frame = pd.read_csv(csv, dtype=str, keep_default_na=False)  # text in, text out: values unchanged
        self.stages = [(self.frame, "")]
        if {"perturbation", "level"} <= set(self.frame.columns):
            level = pd.to_numeric(self.frame["level"], errors="coerce")
            for levels, what in ((keep_levels, "the levels the report shows"), ([CLEAN], "the clean images")):
                keep = np.zeros(len(self.frame), bool)
                for kind, value in levels:
                    keep |= (self.frame["perturbation"] == kind).to_numpy() & np.isclose(level, value)
                self.stages.append((self.frame[keep], f"rows of {what} only"))
        self.stage, self.rows = 0, None
        self.data = self._zip(self.frame, "")

    def _zip(self, frame: pd.DataFrame, what: str) -> bytes:
        note = (f"Excerpt of {self.csv} ({what}: {len(frame)} of {len(self.frame)} rows), to keep the report "
                f"within report.budget_mb; the full table is {self.csv} in the run's folder.") if what else ""
        return _zipped(self.name, frame.to_csv(index=False), note)

    def shrink(self) -> bool:
        if self.stage + 1 >= len(self.stages):
            return False
        self.stage += 1
        self.data = self._zip(*self.stages[self.stage])
        return True

    def truncate(self, max_bytes: int) -> None:
        """The longest prefix of the current stage that zips to at most ``max_bytes`` (binary search)."""
        frame, what = self.stages[self.stage]
        lo, hi = 0, len(frame)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self._zip(frame.iloc[:mid], f"{what or 'all rows'}, first rows")) <= max_bytes:
                lo = mid
            else:
                hi = mid - 1
        self.data = self._zip(frame.iloc[:lo], f"{what or 'all rows'}, first {lo} rows")


def zip_tables(tables: dict[str, tuple[str | Path, str | Path]], budget_bytes: int, keep_levels,
               log_path: str | Path | None = None) -> dict[str, str]:
    """Zip each ``name -> (csv, zip)`` so that the zips together take at most ``budget_bytes``: while
    they do not fit, the largest is cut to the rows of ``keep_levels`` (the report's levels), then to the
    clean rows; as a last resort the largest is cut to its first rows. A cut table's zip says so in a
    README.txt beside the CSV. Returns name -> what its zip holds (also written to ``log_path``)."""
    items = {name: _Table(name, csv, keep_levels) for name, (csv, _) in tables.items()}

    def total():
        return sum(len(t.data) for t in items.values())

    while total() > budget_bytes:
        shrinkable = [t for t in items.values() if t.stage + 1 < len(t.stages)]
        if not shrinkable:
            break
        max(shrinkable, key=lambda t: len(t.data)).shrink()
    if total() > budget_bytes:
        largest = max(items.values(), key=lambda t: len(t.data))
        largest.truncate(budget_bytes - (total() - len(largest.data)))
    out = {}
    for name, (_, output) in tables.items():
        with atomic_path(output) as tmp:
            tmp.write_bytes(items[name].data)
        out[name] = f"{len(items[name].data)} bytes" + (f", {items[name].stages[items[name].stage][1]}"
                                                         if items[name].stage else "")
    if log_path is not None:
        Path(log_path).write_text("".join(f"{name}: {what}\n" for name, what in out.items()))
    return out


# ------------------------------------------------------------------------------------ identities

def identical_map_groups(heatmaps_path: str | Path, tol: float = IDENTITY_TOL, chunk: int = 64) -> list[list[str]]:
    """Groups (>= 2 methods, names sorted) linked by pairs whose maps differ by at most ``tol`` at every
    pixel of every image of the file. Read ``chunk`` images at a time; a pair is dropped at its first larger
    difference, and a method with no pair left is no longer read."""
    methods = sorted(read_heatmaps(heatmaps_path, rows=slice(0, 1)).maps)
    pairs = {(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]}
    start = 0
    while pairs:
        needed = sorted({m for pair in pairs for m in pair})
        maps = read_heatmaps(heatmaps_path, methods=needed, rows=slice(start, start + chunk)).maps
        if not len(maps[needed[0]]):
            break
        pairs = {(a, b) for a, b in pairs if np.abs(maps[a] - maps[b]).max() <= tol}
        start += chunk
    groups: list[set[str]] = []
    for a, b in sorted(pairs):
        joined = [g for g in groups if a in g or b in g]
        merged = set().union({a, b}, *joined)
        groups = [g for g in groups if g not in joined] + [merged]
    return sorted(sorted(g) for g in groups)


def identity_note(group: list[str], methods: dict | None = None) -> str:
    """'a = b = c: identical maps', with the reason where it is the GAP + linear head identity."""
    names = {method_of(label, (methods or {}).get(label) or {})[0] for label in group}
    text = " = ".join(group) + f": identical maps (within {IDENTITY_TOL:g} on every clean image)"
    if len(names & GAP_IDENTITY) >= 2:
        text += ", as expected behind a GAP + linear head (the gradient is constant over space)"
    return text


# ------------------------------------------------------------------------------------ our reading

def our_reading() -> set[str]:
    """Registered method and metric names whose method or default is our reading: their registration
    says what (``our_reading=...``; docs/methods.md §6)."""
    return {n for registry in (METHODS, METRICS) for n in registry.names() if registry.get(n).meta.get("our_reading")}


# ------------------------------------------------------------------------------------ the verdict

def _family_metrics(family: str, present) -> list[str]:
    return sorted(m for m in present if m in METRICS and METRICS.get(m).meta.get("family") == family
                  and METRICS.get(m).meta.get("higher_is_better") is not None)


def _conditions(summary: pd.DataFrame) -> list[tuple[str, tuple[str, float]]]:
    """(family, condition): every family on the clean images, robustness also at each kind's strongest level."""
    out = [(family, CLEAN) for family in FAMILIES]
    strongest = summary[summary["perturbation"] != "none"].groupby("perturbation", sort=True)["level"].max()
    return out + [("robustness", (kind, float(level))) for kind, level in strongest.items()]


def _scores(means: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Mean normalised rank (0 = best) and metrics counted, per method, of a methods x metrics table of means."""
    normalised = pd.DataFrame(index=means.index, columns=means.columns, dtype=float)
    for metric in means.columns:
        values = means[metric].dropna()
        oriented = -values if METRICS.get(metric).meta["higher_is_better"] else values
        ranks = rankdata(oriented.to_numpy(), method="average")
        normalised.loc[values.index, metric] = (ranks - 1) / (len(ranks) - 1) if len(ranks) > 1 else 0.0
    return normalised.mean(axis=1), normalised.notna().sum(axis=1)


def _pair_p(posthoc: pd.DataFrame, a: str, b: str) -> pd.Series:
    """p_adj per metric of the pair (a, b) ('groups' is 'a,b' sorted by name)."""
    rows = posthoc[posthoc["groups"] == ",".join(sorted([a, b]))]
    return rows.set_index("metric")["p_adj"]


def _better(metric: str, a: float, b: float) -> bool:
    """Is mean ``a`` better than mean ``b`` on ``metric``?"""
    return a > b if METRICS.get(metric).meta["higher_is_better"] else a < b


def _fmt(value: float) -> str:
    return "nan" if not np.isfinite(value) else f"{value:.4g}"


def verdict_table(summary: pd.DataFrame, posthoc: pd.DataFrame, alpha: float = 0.05,
                  identities: dict | None = None, standin: dict | None = None, reading: set | None = None,
                  methods: dict | None = None, test: str = TEST) -> pd.DataFrame:
    """One row per dataset x model x metric family x condition (module docstring).

    ``identities``: (dataset, model) -> groups of identical methods; ``standin``: dataset -> stand-in
    kind ('none' = real data); ``reading``: registered names that are our reading; ``methods``:
    cam.methods (label -> parameters), to map labels to registered names."""
    need = {"dataset", "model", "method", "perturbation", "level", "metric", "mean", "ci_low", "ci_high", "n"}
    missing = sorted(need - set(summary.columns))
    if missing:
        raise ValueError(f"metric summary: missing columns {missing}")
    missing = sorted({"dataset", "model", "perturbation", "level", "metric", "test", "design", "groups",
                      "p_adj", "family"} - set(posthoc.columns))
    if missing:
        raise ValueError(f"post-hoc table: missing columns {missing}")
    summary = summary.assign(level=summary["level"].astype(float))
    posthoc = posthoc[posthoc["test"] == test].assign(level=lambda t: t["level"].astype(float))
    identities, standin, reading = identities or {}, standin or {}, reading or set()
    name_of = {label: method_of(label, (methods or {}).get(label) or {})[0] for label in summary["method"].unique()}
    rows = []
    for (dataset, model), block in summary.groupby(["dataset", "model"], sort=True):
        groups = identities.get((dataset, model), [])
        for family, (kind, level) in _conditions(block):
            at = block[(block["perturbation"] == kind) & (block["level"] == level)]
            metrics = _family_metrics(family, at["metric"].unique())
            if not metrics:
                continue
            at = at[at["metric"].isin(metrics)]
            means = at.pivot_table(index="method", columns="metric", values="mean", aggfunc="first")
            score, counted = _scores(means)
            best = sorted(score.index[score <= score.min() + 1e-12])
            lead = best[0]
            tests = posthoc[(posthoc["dataset"] == dataset) & (posthoc["model"] == model)
                            & (posthoc["perturbation"] == kind) & (posthoc["level"] == level)
                            & posthoc["metric"].isin(metrics)]
            not_different, different, beats = [], [], []
            for other in sorted(set(means.index) - set(best)):
                significant = [m for m, p in _pair_p(tests, lead, other).items() if p < alpha and m in means]
                wins = [m for m in significant if _better(metric=m, a=means.at[other, m], b=means.at[lead, m])]
                (different if significant else not_different).append(other)
                if wins:  # the family's ranking and a significant test disagree on these metrics
                    beats.append(f"{other} ({', '.join(wins)})")
            lead_rows = at[at["method"] == lead].set_index("metric")
            values = [f"{m}: {_fmt(r['mean'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                      for m, r in lead_rows.loc[[m for m in metrics if m in lead_rows.index]].iterrows()]
            shown = set(best) | set(not_different)
            caveats = []
            if standin.get(dataset, "none") != "none":
                caveats.append(f"{dataset} is a synthetic stand-in (standin.kind {standin[dataset]}): "
                               "a verdict on these images, not on real data")
            n_images = int(at["n"].min())
            if n_images < FEW_IMAGES:
                caveats.append(f"few images (at least {n_images} per metric): wide CIs, weak tests")
            if tests.empty:
                caveats.append(f"no {test} rows in the post-hoc table: no pair was tested")
            read_methods = sorted(m for m in shown if name_of.get(m, m) in reading)
            if read_methods:
                caveats.append("our reading (docs/methods.md §6): method(s) "
                               + ", ".join(read_methods))
            read_metrics = [m for m in metrics if m in reading]
            if read_metrics:
                caveats.append("our reading: metric(s) " + ", ".join(read_metrics))
            rows.append(dict(
                dataset=dataset, model=model, perturbation=kind, level=level, metric_family=family,
                metrics=";".join(metrics), best=";".join(best), score=float(score[lead]),
                n_metrics=int(counted[lead]), best_values="; ".join(values),
                not_different=";".join(not_different), different=";".join(different),
                better_somewhere="; ".join(beats), test=test,
                design=";".join(sorted(tests["design"].dropna().unique())) or "paired",
                p_adj_family=";".join(sorted(tests["family"].dropna().unique())) or "block", alpha=alpha,
                n_images=n_images,
                identical_maps="; ".join(" = ".join(g) for g in groups if set(g) & shown),
                caveats="; ".join(caveats)))
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


# ------------------------------------------------------------------------------------ pages

def _condition_text(kind: str, level: float) -> str:
    return "clean" if kind == "none" else f"{kind} {level:g}"


def _with_identities(methods: str, groups: list[list[str]]) -> list[str]:
    """'gradcam' -> 'gradcam (= cam = hirescam)' where it has identical maps."""
    out = []
    for m in filter(None, methods.split(";")):
        mates = [x for g in groups if m in g for x in g if x != m]
        out.append(m + (f" (= {' = '.join(mates)})" if mates else ""))
    return out


def _split(text) -> list[str]:
    return [] if not isinstance(text, str) or not text else text.split("; ")


def _common_caveats(block: pd.DataFrame) -> set[str]:
    """The caveats every row of a dataset x model block has."""
    return set.intersection(*(set(_split(t)) for t in block["caveats"]))


RULE_TEXT = ("Best: lowest mean normalised rank over the family's metrics with a better direction (per metric, "
             "methods ranked by their mean, scaled to 0 = best .. 1 = worst). Not significantly different: "
             "{test} signed-rank test against the best, images as blocks (design paired), Holm-adjusted within "
             "each block's pairs (p_adj family 'block'), p_adj >= {alpha:g} on every metric of the family. "
             "Clean images; robustness also at each perturbation kind's strongest level.")


def verdict_html(table: pd.DataFrame, notes: dict | None = None) -> str:
    """The full verdict page (a self-contained HTML document; every text escaped). ``notes``:
    (dataset, model) -> identity explanations."""
    notes = notes or {}
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>cambench verdict</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>Verdict: which CAM to trust</h1>"]
    if table.empty:
        parts.append("<p><em>No metric with a better direction was computed: no verdict.</em></p>")
    else:
        first = table.iloc[0]
        parts.append(f"<p>{html.escape(RULE_TEXT.format(test=first['test'], alpha=float(first['alpha'])))}</p>")
    for (dataset, model), block in table.groupby(["dataset", "model"], sort=True):
        groups = [g.split(" = ") for g in {x for t in block["identical_maps"] for x in _split(t)}]
        parts.append(f"<h2>{html.escape(str(dataset))} / {html.escape(str(model))}</h2>")
        for note in notes.get((dataset, model), []):
            parts.append(f"<p>{html.escape(note)}</p>")
        common = _common_caveats(block)  # said once, above the table
        parts += [f"<p><em>{html.escape(c)}</em></p>" for c in sorted(common)]
        rows = [{"family": r.metric_family, "images": _condition_text(r.perturbation, r.level),
                 "best (score; 0 = best on every metric)": _with_identities(r.best, groups) + [f"score {r.score:.2f}, "
                                                                                            f"{r.n_metrics} metric(s)"],
                 "best's mean [95 % CI]": _split(r.best_values),
                 "not significantly different": _with_identities(r.not_different, groups) or ["none"],
                 "significantly better than the best on": _split(r.better_somewhere) or ["no metric"],
                 "caveats": [c for c in _split(r.caveats) if c not in common]} for r in block.itertuples()]
        parts.append(html_table(rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def verdict_summary_html(table: pd.DataFrame) -> str:
    """The short form for the report's landing page: an HTML fragment (escaped), best and ties per family."""
    # Snakemake's content pane centres its child vertically (flex, align-items center): a landing page
    # taller than the window (the rule graph alone is) loses its top, the verdict, above the scroll
    # range. 'safe center' centres only what fits; this style lives as long as the landing page.
    parts = ["<style>div.items-center.h-screen.overflow-auto { align-items: safe center; }</style>",
             '<div id="cambench-verdict"><h2>Verdict: which CAM to trust</h2>',
             "<p>Per metric family, the best method(s) and those the tests cannot tell apart from it. The rule, "
             "means with 95 % CIs, identities and caveats: results category <em>Answer</em>.</p>"]
    if table.empty:
        parts.append("<p>No metric with a better direction was computed: no verdict.</p>")
    for (dataset, model), block in table.groupby(["dataset", "model"], sort=True):
        groups = [g.split(" = ") for g in {x for t in block["identical_maps"] for x in _split(t)}]
        rows = [{"family": f"{r.metric_family} ({_condition_text(r.perturbation, r.level)})",
                 "best": ", ".join(_with_identities(r.best, groups)),
                 "not significantly different": ", ".join(_with_identities(r.not_different, groups)) or "none",
                 "significantly better on some metric": ", ".join(b.split(" (")[0] for b in _split(r.better_somewhere))
                 or "none"} for r in block.itertuples()]
        parts.append(f"<p><strong>{html.escape(str(dataset))} / {html.escape(str(model))}</strong></p>")
        parts += [f"<p><em>{html.escape(c)}</em></p>" for c in sorted(_common_caveats(block))
                  if "stand-in" in c or "few images" in c]
        parts.append(html_table(rows))
    parts.append("</div>")
    return "\n".join(parts)


def write_verdict(summary_csv: str | Path, posthoc_csv: str | Path, heatmaps: dict, outputs: dict,
                  alpha: float = 0.05, standin: dict | None = None, methods: dict | None = None) -> pd.DataFrame:
    """The rule: ``heatmaps`` (dataset, model) -> clean heatmap file; ``outputs`` csv, html, summary paths."""
    for path in (summary_csv, posthoc_csv):
        if not Path(path).is_file():
            raise FileNotFoundError(f"verdict: table not found: {path}")
    identities, notes = {}, {}
    for key, path in heatmaps.items():
        identities[key] = identical_map_groups(path)
        notes[key] = [identity_note(g, methods) for g in identities[key]]
        log.info("%s / %s: identical maps %s", *key, identities[key])
    table = verdict_table(pd.read_csv(summary_csv), pd.read_csv(posthoc_csv), alpha, identities, standin,
                          our_reading(), methods)
    with atomic_path(outputs["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(outputs["html"]) as tmp:
        tmp.write_text(verdict_html(table, notes), encoding="utf-8")
    with atomic_path(outputs["summary"]) as tmp:
        tmp.write_text(verdict_summary_html(table), encoding="utf-8")
    return table
