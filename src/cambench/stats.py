"""Statistical tests on the tidy metric table (scipy / statsmodels; nothing hand-rolled)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .utils import atomic_path

BLOCK_KEYS = ["dataset", "model", "perturbation", "level", "metric"]
STATS_COLUMNS = BLOCK_KEYS + ["test", "groups", "statistic", "p", "p_adj", "effect_size", "effect_name",
                              "significant", "n", "k", "mean_ranks", "note"]


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


def friedman_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """One Friedman test per (dataset, model, perturbation, level, metric); Holm across the table."""
    rows = []
    from .metrics import METRICS  # metrics with compare=False (e.g. flip_rate) do not depend on the method
    compared = [m for m in table["metric"].unique() if m not in METRICS or METRICS.get(m).meta.get("compare", True)]
    table = table[table["metric"].isin(compared)]
    for key, group in table.groupby(BLOCK_KEYS, sort=True):
        wide = group.pivot_table(index="image_id", columns="method", values="value", aggfunc="first").dropna()
        methods = list(wide.columns)
        row = dict(zip(BLOCK_KEYS, key), test="friedman", groups=",".join(methods), n=len(wide), k=len(methods),
                   effect_name="kendall_w", statistic=np.nan, p=np.nan, effect_size=np.nan, mean_ranks="", note="")
        if len(methods) < 3 or len(wide) < 2:
            row["note"] = "needs >= 3 methods and >= 2 complete blocks"
        else:
            chi2, p, w, ranks = friedman(wide.to_numpy())
            row.update(statistic=chi2, p=p, effect_size=w,
                       mean_ranks=json.dumps({m: round(float(r), 4) for m, r in zip(methods, ranks)}))
            if np.isnan(chi2):
                row["note"] = "all values tied within every block: no test"
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in STATS_COLUMNS if c not in ("p_adj", "significant")])
    out["p_adj"] = np.nan
    ok = out["p"].notna()
    if ok.any():
        out.loc[ok, "p_adj"] = multipletests(out.loc[ok, "p"], method="holm")[1]
    out["significant"] = out["p_adj"] < alpha
    return out[STATS_COLUMNS]


def run_statistics(metrics_parquet: str, output_csv: str, alpha: float = 0.05) -> pd.DataFrame:
    result = friedman_table(pd.read_parquet(metrics_parquet), alpha)
    with atomic_path(output_csv) as tmp:
        result.to_csv(tmp, index=False, float_format="%.6g")
    return result
