"""Statistical tests on the tidy metric table (scipy / statsmodels / scikit-posthocs; nothing hand-rolled).

Every table has the columns ``STATS_COLUMNS`` (the across-models table adds ``method``), one row per test:
Friedman across methods, pairwise post-hoc tests (Wilcoxon signed-rank with Holm, Nemenyi), the comparison
of (dataset, model) groups (paired Wilcoxon / Friedman when the groups share images, Kruskal-Wallis with Dunn
pairs when they do not), and linear mixed models of method x severity.

``design`` says whether a row's samples are ``paired`` (the same images in every group) or ``independent``.
``p_adj`` is Holm-adjusted within the family named in ``family``: ``table`` (every row of that kind in the
table: the omnibus tests, the mixed-model terms) or ``block`` (the pairs of one block, or Nemenyi's own
family-wise p). ``p_adj_table`` is Holm over every finite ``p`` of the table, whatever the family.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
import warnings
import zlib

import numpy as np
import pandas as pd
import scikit_posthocs
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from .tables import Partition, map_partitions, partitions, read_block
from .utils import atomic_path

log = logging.getLogger(__name__)

BLOCK_KEYS = ["dataset", "model", "perturbation", "level", "metric"]
STATS_COLUMNS = BLOCK_KEYS + ["test", "design", "groups", "statistic", "p", "p_adj", "family", "p_adj_table",
                              "effect_size", "effect_name", "significant", "n", "k", "mean_ranks", "note"]
KRUSKAL_COLUMNS = BLOCK_KEYS[:2] + ["method"] + BLOCK_KEYS[2:] + STATS_COLUMNS[len(BLOCK_KEYS):]
POSTHOC_TESTS = ("wilcoxon", "nemenyi")
STATS_OUTPUTS = ("friedman", "posthoc", "kruskal", "mixed_model")
# groups of (dataset, model) that share images are compared paired on the images they all have, provided
# those are at least this share of the smallest group's images (else no test: see kruskal_table)
PAIRED_MIN_SHARE = 0.5


def _is_compared(metric: str) -> bool:
    """Whether a metric differs between methods (compare=False ones, e.g. flip_rate, do not)."""
    from .metrics import METRICS
    return metric not in METRICS or METRICS.get(metric).meta.get("compare", True)


def _compared(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the metrics that differ between methods."""
    return table[table["metric"].isin([m for m in table["metric"].unique() if _is_compared(m)])]


@contextlib.contextmanager
def _gc_frozen():
    """statsmodels' Holm (multipletests, also inside scikit-posthocs) calls gc.collect(), which scans every live
    object: a quarter of a second per call next to a metric table. Frozen objects are skipped by the collector."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p over the finite entries (NaN stays NaN)."""
    adjusted = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        with _gc_frozen():
            adjusted[ok] = multipletests(p[ok].to_numpy(float), method="holm")[1]
    return adjusted


def _finish(rows: list[dict], columns: list[str], alpha: float) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=columns)
    for col in ("statistic", "p", "p_adj", "p_adj_table", "effect_size"):
        out[col] = out[col].astype(float)
    return _table_wide(out, alpha)


def _table_wide(out: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """``p_adj_table`` (Holm over every finite p of the table) and ``significant`` (``p_adj`` below alpha)."""
    out["p_adj_table"] = _holm(out["p"]) if len(out) else np.nan
    out["significant"] = out["p_adj"] < alpha
    return out


def friedman(values: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """Friedman chi-square across k methods (columns) with n images (rows) as blocks.

    Returns (statistic, p, Kendall's W, mean rank per method). W = chi2 / (n (k - 1)), from the
    tie-corrected statistic. NaN statistic/p/W when every block is all ties (no test possible).
    """
    n, k = values.shape
    ranks = stats.rankdata(values, axis=1)
    mean_ranks = ranks.mean(axis=0)
    if np.all(values == values[:, :1]):
        return np.nan, np.nan, np.nan, mean_ranks
    chi2, p = stats.friedmanchisquare(*values.T)
    return float(chi2), float(p), float(chi2 / (n * (k - 1))), mean_ranks


def friedman_row(key: tuple, wide: pd.DataFrame) -> dict:
    """The Friedman row of one block (``key`` = BLOCK_KEYS; ``wide`` images x methods, complete cases)."""
    methods = list(wide.columns)
    row = dict(zip(BLOCK_KEYS, key), test="friedman", design="paired", family="table", groups=",".join(methods),
               n=len(wide), k=len(methods),
               effect_name="kendall_w", statistic=np.nan, p=np.nan, effect_size=np.nan, mean_ranks="", note="")
    if len(methods) < 3 or len(wide) < 2:
        row["note"] = "needs >= 3 methods and >= 2 complete blocks"
    else:
        chi2, p, w, ranks = friedman(wide.to_numpy())
        row.update(statistic=chi2, p=p, effect_size=w,
                   mean_ranks=json.dumps({m: round(float(r), 4) for m, r in zip(methods, ranks)}))
        if np.isnan(chi2):
            row["note"] = "all values tied within every block: no test"
    return row


def _friedman_finish(rows: list[dict], alpha: float) -> pd.DataFrame:
    out = _finish(rows, STATS_COLUMNS, alpha)
    out["p_adj"] = _holm(out["p"])  # the family is the table: p_adj = p_adj_table
    return _table_wide(out, alpha)


def friedman_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One Friedman test per (dataset, model, perturbation, level, metric); Holm across the table."""
    return _friedman_finish([friedman_row(key, wide) for key, wide in _method_blocks(table)],
                            alpha)


# ---------------------------------------------------------------------------------------------- post-hoc pairs

def _signed_rank_sums(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks of |d| per column over the non-zero differences (zeros dropped, Wilcoxon's zero method,
    and given rank 0), and the rank sums R+ and R- of the positive and the negative differences."""
    ranks = np.nan_to_num(stats.rankdata(np.where(d == 0, np.nan, np.abs(d)), axis=0, nan_policy="omit"))
    return ranks, np.where(d > 0, ranks, 0.0).sum(axis=0), np.where(d < 0, ranks, 0.0).sum(axis=0)


def rank_biserial(differences: np.ndarray) -> np.ndarray:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) per column of paired differences.

    Ranks of |d| over the non-zero differences (zeros dropped, as in Wilcoxon's zero method); +1 when every
    difference is positive, -1 when every one is negative, NaN when all are zero.
    """
    d = np.asarray(differences, dtype=float)
    _, r_plus, r_minus = _signed_rank_sums(d[:, None] if d.ndim == 1 else d)
    total = r_plus + r_minus
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (r_plus - r_minus) / total, np.nan)


# scipy's Wilcoxon gives small tied samples the exact sign-flip permutation p (2**n flips for n <= 13);
# it enumerates them in Python, seconds per call, so that case is computed here in one product.
_PERMUTATION_MAX_N = 13


def _sign_flip_wilcoxon(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided sign-flip permutation test of R+ per column (n <= 13), as scipy's
    ``wilcoxon(method='auto')`` runs it for tied or zero differences: zeros dropped (``wilcox``), every
    one of the 2**n sign assignments, p = min(1, 2 min(P(R+ <= r), P(R+ >= r))) with scipy's relative
    tolerance. Ranks are multiples of 1/2, so every sum is exact in float64."""
    n = d.shape[0]
    ranks, r_plus, r_minus = _signed_rank_sums(d)
    # a flip maps the positive set to any subset, so the null of R+ is every subset sum of the ranks
    subsets = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
    null = subsets.astype(float) @ ranks
    gamma = np.abs(np.finfo(float).eps * 100 * r_plus)
    p_less = np.count_nonzero(null <= r_plus + gamma, axis=0) / 2 ** n
    p_greater = np.count_nonzero(null >= r_plus - gamma, axis=0) / 2 ** n
    return np.minimum(r_plus, r_minus), np.clip(2 * np.minimum(p_less, p_greater), 0.0, 1.0)


def paired_wilcoxon(differences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scipy's two-sided Wilcoxon signed-rank test on each column of paired differences (n, pairs).

    Returns (statistic, p); NaN for columns whose differences are all zero. scipy's ``method='auto'`` picks
    the exact or the normal-approximation p once per call (normal if any column has ties or zeros), so tied
    and tie-free columns go in separate calls: each column gets what a one-column call would give. Tied
    columns of n <= 13 get scipy's exact sign-flip permutation p, computed by :func:`_sign_flip_wilcoxon`.
    """
    d = np.asarray(differences, dtype=float)
    statistic = np.full(d.shape[1], np.nan)
    p = np.full(d.shape[1], np.nan)
    all_zero = np.all(d == 0, axis=0)
    sorted_abs = np.sort(np.abs(d), axis=0)
    tied = np.any(d == 0, axis=0) | np.any(sorted_abs[1:] == sorted_abs[:-1], axis=0)
    for chosen, ties in ((tied & ~all_zero, True), (~tied & ~all_zero, False)):
        if not chosen.any():
            continue
        if ties and d.shape[0] <= _PERMUTATION_MAX_N:
            statistic[chosen], p[chosen] = _sign_flip_wilcoxon(d[:, chosen])
        else:
            result = stats.wilcoxon(d[:, chosen], axis=0)
            statistic[chosen], p[chosen] = result.statistic, result.pvalue
    return statistic, p


def wide_block(group: pd.DataFrame) -> pd.DataFrame:
    """One block's values as images x methods (both sorted), complete cases only."""
    wide = group.pivot_table(index="image_id", columns="method", values="value", aggfunc="first").dropna()
    return wide[sorted(wide.columns)]


def _method_blocks(table: pd.DataFrame):
    """(block key, wide frame images x methods of complete cases) per block of the compared metrics."""
    for key, group in _compared(table).groupby(BLOCK_KEYS, sort=True):
        yield key, wide_block(group)


def posthoc_table(table: pd.DataFrame, alpha: float = 0.05, tests=POSTHOC_TESTS) -> pd.DataFrame:
    """Pairwise comparisons of methods per (dataset, model, perturbation, level, metric), images as blocks.

    ``wilcoxon``: scipy's signed-rank test per pair, Holm within each block's family of pairs, effect size the
    matched-pairs rank-biserial correlation (positive when the first method of ``groups`` has larger values).
    ``nemenyi``: scikit-posthocs' Nemenyi test after Friedman (p already family-wise, so p_adj = p), statistic
    the studentized range q, effect size the first method's mean rank minus the second's (rank 1 = lowest).
    ``groups`` is "a,b" with a < b; ``k`` is the number of methods in the block.
    """
    tests = _posthoc_tests(tests)
    return _finish([r for key, wide in _method_blocks(table) for r in posthoc_rows(key, wide, tests)],
                   STATS_COLUMNS, alpha)


def _posthoc_tests(tests) -> tuple[str, ...]:
    tests = (tests,) if isinstance(tests, str) else tuple(tests)
    unknown = [t for t in tests if t not in POSTHOC_TESTS]
    if unknown or not tests:
        raise ValueError(f"tests: expected a non-empty subset of {list(POSTHOC_TESTS)}, got {list(tests)}")
    return tests


def posthoc_rows(key: tuple, wide: pd.DataFrame, tests=POSTHOC_TESTS) -> list[dict]:
    """The post-hoc rows of one block (``key`` = BLOCK_KEYS; ``wide`` images x sorted methods)."""
    methods = list(wide.columns)
    n, k = wide.shape
    base = dict(zip(BLOCK_KEYS, key), n=n, k=k, mean_ranks="", note="", statistic=np.nan, p=np.nan,
                p_adj=np.nan, effect_size=np.nan, design="paired", family="block")
    if k < 2 or n < 2:
        return [dict(base, test=test, groups=",".join(methods), note="needs >= 2 methods and >= 2 complete blocks",
                     effect_name="rank_biserial" if test == "wilcoxon" else "mean_rank_difference")
                for test in tests]
    rows = []
    first, second = np.triu_indices(k, 1)
    pairs = [f"{methods[i]},{methods[j]}" for i, j in zip(first, second)]
    values = wide.to_numpy(dtype=float)
    if "wilcoxon" in tests:
        differences = values[:, first] - values[:, second]
        statistic, p = paired_wilcoxon(differences)
        p_adj = _holm(pd.Series(p)).to_numpy()
        effect = rank_biserial(differences)
        for i, pair in enumerate(pairs):
            note = "all paired differences are zero: no test" if np.isnan(p[i]) else ""
            rows.append(dict(base, test="wilcoxon", groups=pair, statistic=statistic[i], p=p[i], p_adj=p_adj[i],
                             effect_size=effect[i], effect_name="rank_biserial", note=note))
    if "nemenyi" in tests:
        p_matrix = scikit_posthocs.posthoc_nemenyi_friedman(wide).loc[methods, methods].to_numpy()
        mean_ranks = stats.rankdata(values, axis=1).mean(axis=0)
        rank_difference = mean_ranks[first] - mean_ranks[second]
        # the studentized range statistic whose upper tail (k groups, infinite df) is Nemenyi's p
        q = np.sqrt(2.0) * np.abs(rank_difference) / np.sqrt(k * (k + 1) / (6.0 * n))
        for i, (a, b) in enumerate(zip(first, second)):
            p = float(p_matrix[a, b])
            rows.append(dict(base, test="nemenyi", groups=pairs[i], statistic=q[i], p=p, p_adj=p,
                             effect_size=rank_difference[i], effect_name="mean_rank_difference",
                             mean_ranks=json.dumps({methods[a]: round(float(mean_ranks[a]), 4),
                                                    methods[b]: round(float(mean_ranks[b]), 4)})))
    return rows


# ---------------------------------------------------------------- across (dataset, model) groups: paired or not

def cliffs_delta(x: np.ndarray, y: np.ndarray) -> float:
    """Cliff's delta P(X > Y) - P(X < Y) from scipy's Mann-Whitney U of x: 2 U / (n_x n_y) - 1."""
    u = stats.mannwhitneyu(x, y, alternative="two-sided").statistic
    return float(2.0 * u / (len(x) * len(y)) - 1.0)


def _shares_images(frame: pd.DataFrame) -> bool:
    """Whether any image (dataset, image_id) has values in two groups: then the groups are paired samples.
    Image ids number a data set's images, so groups of different data sets never share one."""
    keys = frame.drop_duplicates(["group", "dataset", "image_id"])
    return bool(keys.duplicated(["dataset", "image_id"]).any())


def _paired_group_rows(frame: pd.DataFrame, base: dict) -> list[dict]:
    """The models of each data set compared on the images they all have (complete cases).

    k = 2: one two-sided Wilcoxon signed-rank row (effect: rank-biserial of first - second). k >= 3: a
    Friedman row (Kendall's W) and a Wilcoxon row per pair (Holm within the block). A data set with one
    model is compared with nothing; groups sharing fewer than ``PAIRED_MIN_SHARE`` of the smallest group's
    images (or fewer than 2) get one row without a test, saying so in ``note``.
    """
    rows = []
    for dataset, part in frame.groupby("dataset", sort=True):
        names = sorted(part["group"].unique())
        if len(names) < 2:
            continue
        wide = part.pivot_table(index="image_id", columns="group", values="value", aggfunc="first")[names]
        sizes = wide.notna().sum()
        shared = wide.dropna()
        n, k = len(shared), len(names)
        block = dict(base, dataset=dataset, model="*", design="paired", n=n, k=k)
        omnibus = dict(block, test="wilcoxon" if k == 2 else "friedman", groups=",".join(names), family="table",
                       effect_name="rank_biserial" if k == 2 else "kendall_w")
        need = max(2, int(np.ceil(PAIRED_MIN_SHARE * sizes.min())))
        if n < need:
            omnibus["note"] = (f"the groups share {n} images, fewer than {need} ({PAIRED_MIN_SHARE:g} of the smallest "
                               f"group's {int(sizes.min())}, at least 2): no paired test")
            rows.append(omnibus)
            continue
        values = shared.to_numpy(float)
        omnibus["mean_ranks"] = json.dumps({g: round(float(r), 4)
                                            for g, r in zip(names, stats.rankdata(values, axis=1).mean(axis=0))})
        notes = [f"paired on the {n} images every group has"] if n < sizes.max() else []
        if k == 2:
            d = values[:, :1] - values[:, 1:]
            statistic, p = paired_wilcoxon(d)
            omnibus.update(statistic=statistic[0], p=p[0], effect_size=rank_biserial(d)[0])
            if np.isnan(p[0]):
                notes.append("all paired differences are zero: no test")
            rows.append(dict(omnibus, note="; ".join(notes)))
            continue
        chi2, p, w, _ = friedman(values)
        omnibus.update(statistic=chi2, p=p, effect_size=w)
        rows.append(dict(omnibus, note="; ".join(notes + (["all values tied within every image: no test"]
                                                          if np.isnan(chi2) else []))))
        first, second = np.triu_indices(k, 1)
        d = values[:, first] - values[:, second]
        statistic, p = paired_wilcoxon(d)
        p_adj = _holm(pd.Series(p)).to_numpy()
        effect = rank_biserial(d)
        for i, (a, b) in enumerate(zip(first, second)):
            note = "; ".join(notes + (["all paired differences are zero: no test"] if np.isnan(p[i]) else []))
            rows.append(dict(block, test="wilcoxon", groups=f"{names[a]},{names[b]}", family="block",
                             statistic=statistic[i], p=p[i], p_adj=p_adj[i], effect_size=effect[i],
                             effect_name="rank_biserial", note=note))
    return rows


def _independent_group_rows(frame: pd.DataFrame, names: list[str], base: dict) -> list[dict]:
    """Kruskal-Wallis across the groups (epsilon-squared) and Dunn's pairs (Holm within, Cliff's delta)."""
    samples = {name: frame.loc[frame["group"] == name, "value"].to_numpy(float) for name in names}
    base = dict(base, dataset="*", model="*", design="independent", n=len(frame), k=len(names))
    kruskal = dict(base, test="kruskal", groups=",".join(names), effect_name="epsilon_squared", family="table")
    ranks = stats.rankdata(frame["value"].to_numpy(float))
    kruskal["mean_ranks"] = json.dumps({name: round(float(ranks[(frame["group"] == name).to_numpy()].mean()), 4)
                                        for name in names})
    identical = np.all(frame["value"].to_numpy() == frame["value"].iloc[0])
    if identical:
        kruskal["note"] = "all values identical: no test"
    else:
        h, p = stats.kruskal(*samples.values())
        kruskal.update(statistic=h, p=p, effect_size=h / (len(frame) - 1))
    rows = [kruskal]
    long = frame[["group", "value"]]
    p_raw = p_holm = None
    if not identical:
        p_raw = scikit_posthocs.posthoc_dunn(long, val_col="value", group_col="group").loc[names, names]
        with _gc_frozen():
            p_holm = scikit_posthocs.posthoc_dunn(long, val_col="value", group_col="group",
                                                  p_adjust="holm").loc[names, names]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pair = dict(base, test="dunn", groups=f"{a},{b}", n=len(samples[a]) + len(samples[b]), family="block",
                        effect_name="cliffs_delta", effect_size=cliffs_delta(samples[a], samples[b]))
            if identical:
                pair["note"] = "all values identical: no test"
            else:
                p = float(p_raw.loc[a, b])
                pair.update(p=p, p_adj=float(p_holm.loc[a, b]), statistic=float(stats.norm.isf(p / 2)))
            rows.append(pair)
    return rows


def kruskal_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The (dataset, model) groups compared per (method, perturbation, level, metric); the ``kruskal`` output.

    Keys present in fewer than 2 groups are skipped. The design follows the images (``design`` column):

    - ``paired`` when any image (same data set, same ``image_id``) has values in two groups, as when several
      models explain the same test images: per data set, the models on the images they all have, by
      :func:`_paired_group_rows` (Wilcoxon signed-rank for 2 models, Friedman + Wilcoxon pairs for more;
      rank-biserial / Kendall's W). ``dataset`` holds the data set, ``model`` "*". When some data sets have
      one model and others several, only the models within a data set are compared.
    - ``independent`` when no image is in two groups (e.g. one model per data set): Kruskal-Wallis across all
      groups, effect size epsilon-squared H / (n - 1), then Dunn's pairs (scikit-posthocs, Holm within the
      family: ``p`` unadjusted, ``p_adj`` adjusted), statistic |z| recovered from Dunn's two-sided p, effect
      size Cliff's delta. ``dataset`` and ``model`` hold "*".

    ``groups`` names "dataset/model"; effect sizes are positive when the first group has larger values.
    ``p_adj``: Holm over the table's omnibus rows (``family`` 'table': kruskal, friedman, the 2-group
    wilcoxon) or within the block's pairs (``family`` 'block'); ``p_adj_table``: Holm over every row.
    """
    return _kruskal_finish(kruskal_rows(table), alpha)


def kruskal_rows(table: pd.DataFrame) -> list[dict]:
    """The rows of :func:`kruskal_table` before the table-wide Holm (any subset of whole
    (perturbation, level, metric) keys: every group's rows of each)."""
    table = _compared(table).dropna(subset=["value"])
    table = table.assign(group=table["dataset"].astype(str) + "/" + table["model"].astype(str))
    rows = []
    for (method, perturbation, level, metric), frame in table.groupby(["method", "perturbation", "level", "metric"],
                                                                      sort=True):
        names = sorted(frame["group"].unique())
        if len(names) < 2:
            continue
        base = dict(method=method, perturbation=perturbation, level=level, metric=metric, mean_ranks="", note="",
                    statistic=np.nan, p=np.nan, p_adj=np.nan, effect_size=np.nan)
        rows += (_paired_group_rows(frame, base) if _shares_images(frame)
                 else _independent_group_rows(frame, names, base))
    return rows


def _kruskal_finish(rows: list[dict], alpha: float) -> pd.DataFrame:
    out = _finish(rows, KRUSKAL_COLUMNS, alpha)
    omnibus = out["family"] == "table"
    out.loc[omnibus, "p_adj"] = _holm(out.loc[omnibus, "p"])
    return _table_wide(out, alpha)


# ---------------------------------------------------------------------------------- mixed model over severity

def _mixed_model_rows(data: pd.DataFrame, base: dict) -> list[dict]:
    """Fit value ~ C(method) * severity with a random intercept per image; one row per fixed-effect term."""
    methods = sorted(data["method"].unique())
    severities = np.unique(data["severity"])
    base = dict(base, test="mixedlm", n=len(data), k=len(methods), mean_ranks="", statistic=np.nan, p=np.nan,
                p_adj=np.nan, effect_size=np.nan, effect_name="coefficient", design="paired", family="table")

    def failed(reason: str) -> list[dict]:
        return [dict(base, groups="", note=reason)]

    if len(severities) < 2:
        return failed(f"needs >= 2 distinct severities, has {severities.tolist()}: no fit")
    if len(methods) < 2:
        return failed(f"needs >= 2 methods, has {methods}: no fit")
    if data["image_id"].nunique() < 2:
        return failed("needs >= 2 images (random-intercept groups): no fit")
    # C(method) takes the first method in sorted order as its reference level (treatment coding)
    model = smf.mixedlm("value ~ C(method) * severity", data, groups=data["image_id"])
    if np.linalg.matrix_rank(model.exog) < model.exog.shape[1]:
        return failed("singular fixed-effect design (a method lacks some severity?): no fit")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit = model.fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as err:
            return failed(f"fit failed: {err}")
    messages = sorted({str(w.message).split("\n")[0] for w in caught if issubclass(w.category, ConvergenceWarning)})
    if not fit.converged:
        return failed("did not converge: " + "; ".join(messages) if messages else "did not converge")
    note = f"reference method {methods[0]}; severities {severities.tolist()}"
    if messages:
        note += "; " + "; ".join(messages)
    return [dict(base, groups=term, statistic=float(fit.tvalues[term]), p=float(fit.pvalues[term]),
                 effect_size=float(fit.fe_params[term]), note=note) for term in fit.fe_params.index]


def _mixed_model_metrics(metrics, available) -> list[str] | None:
    if metrics is None:
        return None
    from .metrics import METRICS
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRICS and m not in set(available)]
    if unknown:
        raise ValueError(f"metrics: expected registered metric names, got unknown {unknown}")
    return metrics


def image_subsample(image_ids, max_images: int | None, seed: int) -> set | None:
    """The images a mixed model is fitted on: None (all) when there are at most ``max_images``, else the
    ``max_images`` whose CRC-32 of "<seed>/<image id>" is smallest: a seeded random sample that is the same
    set for every kind and metric of a model (docs/outputs.md §2.2)."""
    ids = np.unique(np.asarray(image_ids, dtype=str))
    if max_images is None or len(ids) <= max_images:
        return None
    checksums = np.array([zlib.crc32(f"{seed}/{i}".encode()) for i in ids], dtype=np.int64)
    return set(ids[np.lexsort((ids, checksums))[:max_images]].tolist())


def _mixed_fit(clean: pd.DataFrame, perturbed: pd.DataFrame, base: dict, max_images: int | None,
               seed: int) -> list[dict]:
    """One fit: the clean rows (severity 0) and one kind's levels (severity = level), subsampled."""
    data = pd.concat([clean.assign(severity=0.0), perturbed.assign(severity=perturbed["level"].astype(float))],
                     ignore_index=True)[["image_id", "method", "severity", "value"]]
    chosen = image_subsample(data["image_id"], max_images, seed)
    if chosen is None:
        return _mixed_model_rows(data, base)
    total = data["image_id"].nunique()
    rows = _mixed_model_rows(data[data["image_id"].isin(chosen)].reset_index(drop=True), base)
    sample = (f"fitted on a seeded random subsample of {len(chosen)} of the {total} images "
              f"(stats.mixed_model_max_images)")
    return [dict(r, note=f"{r['note']}; {sample}" if r["note"] else sample) for r in rows]


def mixed_model_table(table: pd.DataFrame, metrics=None, alpha: float = 0.05, max_images: int | None = None,
                      seed: int = 0) -> pd.DataFrame:
    """Linear mixed model per (dataset, model, perturbation kind, metric): value ~ C(method) * severity.

    statsmodels MixedLM, random intercept per image (groups = image_id), fitted on the clean rows (severity 0)
    plus the kind's levels (severity = level). One row per fixed-effect term: statistic z, effect_size the
    coefficient; Holm over all rows. ``level`` is NaN (the fit spans the levels, listed in ``note``).
    ``metrics=None``: every compared metric. A fit that cannot run gives one row with the reason in ``note``.
    Fits over more than ``max_images`` images use a seeded subsample of them (:func:`image_subsample`,
    stated in ``note``; ``n`` counts the rows fitted).
    """
    table = _compared(table).dropna(subset=["value"])
    metrics = _mixed_model_metrics(metrics, table["metric"])
    if metrics is not None:
        table = table[table["metric"].isin(metrics)]
    rows = []
    clean_mask = table["perturbation"] == "none"
    kinds = sorted(table.loc[~clean_mask, "perturbation"].unique())
    for (dataset, model, metric), frame in table.groupby(["dataset", "model", "metric"], sort=True):
        clean = frame[frame["perturbation"] == "none"]
        for kind in kinds:
            perturbed = frame[frame["perturbation"] == kind]
            if perturbed.empty and clean.empty:
                continue
            base = dict(dataset=dataset, model=model, perturbation=kind, level=np.nan, metric=metric)
            rows += _mixed_fit(clean, perturbed, base, max_images, seed)
    return _mixed_finish(rows, alpha)


def _mixed_finish(rows: list[dict], alpha: float) -> pd.DataFrame:
    out = _finish(rows, STATS_COLUMNS, alpha)
    out["p_adj"] = _holm(out["p"])
    return _table_wide(out, alpha)


# ------------------------------------------------------------------------- the rule: block by block

BLOCK_READ = ["method", "image_id", "value"]


def _partition_tests(part: Partition, tests: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """Friedman and post-hoc rows of one partition's compared metrics (one block in memory at a time)."""
    friedman_rows, pair_rows = [], []
    for metric in sorted(m for m in part.metrics if _is_compared(m)):
        key = (*part.key, metric)
        wide = wide_block(read_block(part, metric, BLOCK_READ))
        friedman_rows.append(friedman_row(key, wide))
        pair_rows += posthoc_rows(key, wide, tests)
    return friedman_rows, pair_rows


def _level_group_tests(parts: list[Partition]) -> list[dict]:
    """The across-model rows of one (perturbation, level): per metric, every model's block."""
    rows = []
    for metric in sorted({m for p in parts for m in p.metrics if _is_compared(m)}):
        frames = [read_block(p, metric, ["dataset", "model", *BLOCK_READ, "perturbation", "level", "metric"])
                  for p in parts if metric in p.metrics]
        rows += kruskal_rows(pd.concat(frames, ignore_index=True))
    return rows


def _model_fits(task: tuple, kinds: list[str], max_images: int | None, seed: int) -> list[dict]:
    """The mixed models of one (dataset, model, metric): one fit per perturbation kind."""
    (dataset, model, metric), parts = task
    columns = ["image_id", "method", "level", "value"]

    def rows_of(selected: list[Partition]) -> pd.DataFrame:
        frames = [read_block(p, metric, columns) for p in selected if metric in p.metrics]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        return frame.dropna(subset=["value"])

    clean = rows_of([p for p in parts if p.perturbation == "none"])
    rows = []
    for kind in kinds:
        perturbed = rows_of([p for p in parts if p.perturbation == kind])
        if perturbed.empty and clean.empty:
            continue
        base = dict(dataset=dataset, model=model, perturbation=kind, level=np.nan, metric=metric)
        rows += _mixed_fit(clean, perturbed, base, max_images, seed)
    return rows


def _grouped(parts: list[Partition], key) -> list[tuple]:
    groups: dict = {}
    for p in parts:
        groups.setdefault(key(p), []).append(p)
    return sorted(groups.items(), key=lambda kv: kv[0])


def run_statistics(inputs, outputs: dict[str, str], alpha: float = 0.05, mixed_model_metrics=None,
                   mixed_model_max_images: int | None = None, seed: int = 0,
                   workers: int = 1) -> dict[str, pd.DataFrame]:
    """Write friedman, posthoc, kruskal and mixed_model tables (CSV) from the metric table's partitions
    ``inputs`` (files or directories; ``cambench.tables``), block by block in ``workers`` processes.

    The rows equal those of the whole-table functions (:func:`friedman_table`, ...) on the same table: each
    test reads only its block (friedman, posthoc), its (perturbation, level, metric) across models (kruskal)
    or its model's metric across one kind's levels, subsampled above ``mixed_model_max_images`` images
    (mixed_model); the Holm adjustments run on the collected rows. ``mixed_model_metrics`` (None = every
    compared metric) limits the mixed models, the slow part.
    """
    missing = [name for name in STATS_OUTPUTS if name not in outputs]
    if missing:
        raise ValueError(f"outputs: expected paths for {list(STATS_OUTPUTS)}, missing {missing}")
    parts = partitions(inputs)
    present = {m for p in parts for m in p.metrics}
    chosen = _mixed_model_metrics(mixed_model_metrics, present)
    timings = {}

    def timed(name, build):
        started = time.perf_counter()
        result = build()
        timings[name] = time.perf_counter() - started
        return result

    per_block = timed("friedman", lambda: map_partitions(_partition_tests, parts, workers, POSTHOC_TESTS))
    timings["posthoc"] = timings["friedman"]
    results = {"friedman": _friedman_finish([r for f, _ in per_block for r in f], alpha),
               "posthoc": _finish([r for _, pairs in per_block for r in pairs], STATS_COLUMNS, alpha)}
    levels = [group for _, group in _grouped(parts, lambda p: (p.perturbation, p.level))]
    level_rows = timed("kruskal", lambda: map_partitions(_level_group_tests, levels, workers))
    order = {"method": 0, "perturbation": 1, "level": 2, "metric": 3}
    rows = sorted((r for rs in level_rows for r in rs), key=lambda r: tuple(r[k] for k in order))
    results["kruskal"] = _kruskal_finish(rows, alpha)
    kinds = sorted({p.perturbation for p in parts if p.perturbation != "none"})
    tasks = [((d, m, metric), group) for (d, m), group in _grouped(parts, lambda p: (p.dataset, p.model))
             for metric in sorted({x for p in group for x in p.metrics if _is_compared(x)})
             if chosen is None or metric in chosen]
    fits = timed("mixed_model", lambda: map_partitions(_model_fits, tasks, workers, kinds, mixed_model_max_images,
                                                         seed))
    results["mixed_model"] = _mixed_finish([r for rs in fits for r in rs], alpha)
    for name in STATS_OUTPUTS:
        with atomic_path(outputs[name]) as tmp:
            results[name].to_csv(tmp, index=False, float_format="%.6g")
        log.info("%s: %d rows in %.2f s -> %s", name, len(results[name]), timings[name], outputs[name])
    return results
