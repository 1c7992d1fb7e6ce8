"""Issue 20, items 12 and 14: the summary's aggregates and bootstrap CIs against independent references.

aggregate_metrics on UNBALANCED classes against a pandas groupby (class-mean pointing game, plain means,
the harmonic noise-robustness row); the CIs against scipy's percentile bootstrap (class means resampled
within classes); the reported noise-robustness quantity 2CR/(C+R) from the metrics themselves; MPRT's
constant maps excluded, never scored as a pass."""
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import GapNet
from scipy import stats

import cambench
from cambench.aggregate import aggregate_metrics, bootstrap_mean_ci, bootstrap_robustness_ci
from cambench.metrics import evaluate_applies

B = 20000  # resamples where a CI is compared with scipy's: Monte-Carlo error ~1 % of the CI width


def class_mean_of(*samples, axis=-1):
    return np.mean([s.mean(axis=axis) for s in samples], axis=0)


def harmonic(values, unchanged, axis=-1):
    """2CR / (C + R): C the mean value where the prediction is unchanged, R where it changed."""
    unchanged = unchanged.astype(bool)
    c = np.where(unchanged, values, 0).sum(axis) / unchanged.sum(axis)
    r = np.where(~unchanged, values, 0).sum(axis) / (~unchanged).sum(axis)
    return 2 * c * r / (c + r)


def assert_same_interval(ours, reference, tolerance=0.03):
    """(lo, hi) within ``tolerance`` of the reference interval's width (Monte-Carlo error)."""
    width = reference.high - reference.low
    assert abs(ours[0] - reference.low) < tolerance * width and abs(ours[1] - reference.high) < tolerance * width, \
        (ours, reference)


def test_bootstrap_mean_ci_is_the_95_percent_percentile_interval():
    values = np.random.default_rng(0).normal(size=200)
    mean, lo, hi = bootstrap_mean_ci(values, None, B, np.random.default_rng(1))
    ref = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=B, random_state=2)
    assert mean == values.mean()
    assert_same_interval((lo, hi), ref.confidence_interval)
    # the level is the one asked for: a 90 % interval is narrower by about 1.645 / 1.96
    _, lo90, hi90 = bootstrap_mean_ci(values, None, B, np.random.default_rng(1), level=0.90)
    ref90 = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=B, random_state=2,
                            confidence_level=0.90)
    assert_same_interval((lo90, hi90), ref90.confidence_interval)
    assert (hi90 - lo90) / (hi - lo) == pytest.approx(1.645 / 1.96, abs=0.04)


def test_class_mean_bootstrap_resamples_within_classes():
    """A class of 4 images among 80, far from the others: resampling all images leaves it out of ~2 % of
    the resamples (their mean of class means jumps by half the gap); resampling within classes never."""
    rng = np.random.default_rng(3)
    values = np.r_[rng.normal(0, 1, 76), rng.normal(6, 1, 4)]
    classes = np.r_[np.zeros(76, int), np.ones(4, int)]
    mean, lo, hi = bootstrap_mean_ci(values, classes, B, np.random.default_rng(4))
    assert mean == pytest.approx((values[:76].mean() + values[76:].mean()) / 2)
    ref = stats.bootstrap((values[:76], values[76:]), class_mean_of, method="percentile", n_resamples=B,
                          random_state=5)
    assert_same_interval((lo, hi), ref.confidence_interval)


def test_bootstrap_robustness_ci_against_scipy_paired_percentile_bootstrap():
    rng = np.random.default_rng(6)
    unchanged = rng.random(120) < 0.7
    values = np.where(unchanged, rng.uniform(0.6, 1.0, 120), rng.uniform(0.1, 0.6, 120))
    point, lo, hi = bootstrap_robustness_ci(values, unchanged, B, np.random.default_rng(7))
    assert point == pytest.approx(harmonic(values, unchanged))
    ref = stats.bootstrap((values, unchanged.astype(float)), harmonic, paired=True, method="percentile",
                          n_resamples=B, random_state=8)
    assert_same_interval((lo, hi), ref.confidence_interval)


def unbalanced_table(seed=9) -> pd.DataFrame:
    """Two methods x two levels; classes of 30, 6 and 12 images whose pointing-game rates differ, so the
    mean of class means (1/3 each) is far from the plain mean (weighted 30 : 6 : 12)."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(30, int), np.ones(6, int), np.full(12, 2)]
    rows = []
    for method, offset in (("gradcam", 0.0), ("scorecam", 0.1)):
        for perturbation, level in (("none", 0.0), ("gaussian", 0.2)):
            flipped = (rng.random(len(labels)) < 0.3) if perturbation != "none" else np.zeros(len(labels), bool)
            hit_rate = np.array([0.9, 0.1, 0.4])[labels]
            values = {"pointing_game": (rng.random(len(labels)) < hit_rate).astype(float),
                      "deletion_auc": rng.uniform(0, 0.5, len(labels)) + offset + labels * 0.1}
            if perturbation != "none":
                values["noise_robustness"] = np.where(flipped, rng.uniform(0.1, 0.5, len(labels)),
                                                      rng.uniform(0.6, 1.0, len(labels)))
            for metric, v in values.items():
                params = {"similarity": "ssim", "top_percent": 20.0, "combine": "harmonic"} \
                    if metric == "noise_robustness" else {}
                rows.append(pd.DataFrame({
                    "dataset": "shapes", "model": "cnn", "method": method, "perturbation": perturbation,
                    "level": level, "image_id": np.arange(len(labels)), "label": labels, "target": labels,
                    "prediction": np.where(flipped, (labels + 1) % 3, labels), "clean_prediction": labels,
                    "metric": metric, "value": v, "score": "prob", "params": json.dumps(params),
                    "map_flags": np.zeros(len(labels), np.uint8)}))
    return pd.concat(rows, ignore_index=True)


def test_aggregate_metrics_on_unbalanced_classes_against_a_pandas_groupby(tmp_path):
    table = unbalanced_table()
    table.to_parquet(tmp_path / "part.parquet", index=False)
    summary = aggregate_metrics([tmp_path / "part.parquet"], tmp_path / "summary.csv", tmp_path / "boxes.parquet",
                                n_boot=2000, seed=0)
    keys = ["dataset", "model", "method", "perturbation", "level", "metric"]
    summary = summary.set_index(keys)
    plain = table.groupby(keys)["value"].mean()
    class_mean = table.groupby(keys + ["label"])["value"].mean().groupby(keys).mean()
    for key, row in summary.iterrows():
        metric = key[-1]
        group = table.set_index(keys).loc[key]
        if metric == "pointing_game":
            assert row["aggregate"] == "class_mean" and row["mean"] == pytest.approx(class_mean[key])
            assert abs(class_mean[key] - plain[key]) > 0.05  # the classes are unbalanced enough to tell
        elif metric == "noise_robustness":
            unchanged = (group.prediction == group.clean_prediction).to_numpy()
            assert row["aggregate"] == "harmonic"
            assert row["mean"] == pytest.approx(harmonic(group.value.to_numpy(), unchanged))
        else:
            assert row["aggregate"] == "mean" and row["mean"] == pytest.approx(plain[key])
        assert row.ci_low <= row["mean"] <= row.ci_high and row.n == len(group)
    assert set(summary.index.get_level_values("metric")) == {"pointing_game", "deletion_auc", "noise_robustness"}
    # the class-mean CI is the within-class (stratified) percentile bootstrap
    key = ("shapes", "cnn", "gradcam", "none", 0.0, "pointing_game")
    group = table.set_index(keys).loc[key]
    samples = [group.value[group.label == c].to_numpy() for c in range(3)]
    ref = stats.bootstrap(samples, class_mean_of, method="percentile", n_resamples=B, random_state=10)
    assert_same_interval((summary.loc[key, "ci_low"], summary.loc[key, "ci_high"]), ref.confidence_interval,
                         tolerance=0.06)  # the summary's 2000 resamples


def test_the_reported_noise_robustness_is_the_harmonic_mean_of_consistency_and_responsiveness(tmp_path):
    """The summary row of noise_robustness, from the per-image metric values as compute_metrics writes them,
    equals 2CR/(C+R) with C and R the summary's own consistency and responsiveness means."""
    g = torch.Generator().manual_seed(11)
    n = 16
    reference = torch.rand(n, 12, 12, generator=g)
    perturbed = (reference + 0.3 * torch.rand(n, 12, 12, generator=g)).clamp(0, 1)
    changed = torch.rand(n, generator=g) < 0.4
    perturbed[changed] = 1 - perturbed[changed]  # maps that change with the prediction
    extra = dict(reference=reference, predictions=changed.long(),
                 reference_predictions=torch.zeros(n, dtype=torch.long))
    frames = []
    for metric in ("consistency", "responsiveness", "noise_robustness"):
        params = {"similarity": "ssim", "top_percent": 20.0, **({"combine": "harmonic"}
                                                                if metric == "noise_robustness" else {})}
        values, applies = evaluate_applies(None, torch.zeros(n, 1, 12, 12), perturbed, metric,
                                           targets=torch.zeros(n), **extra, **params)
        keep = applies.numpy()
        frames.append(pd.DataFrame({
            "dataset": "d", "model": "m", "method": "gradcam", "perturbation": "gaussian", "level": 0.1,
            "image_id": np.arange(n)[keep], "label": np.arange(n)[keep] % 2, "target": 0,
            "prediction": changed.long().numpy()[keep], "clean_prediction": 0, "metric": metric,
            "value": values.numpy()[keep].astype(float), "score": "", "params": json.dumps(params),
            "map_flags": np.zeros(int(keep.sum()), np.uint8)}))
    pd.concat(frames).to_parquet(tmp_path / "part.parquet", index=False)
    summary = aggregate_metrics([tmp_path / "part.parquet"], tmp_path / "summary.csv", tmp_path / "boxes.parquet",
                                n_boot=200, seed=0).set_index("metric")
    c, r = summary.loc["consistency", "mean"], summary.loc["responsiveness", "mean"]
    assert c > 0 and r > 0 and summary.loc["noise_robustness", "aggregate"] == "harmonic"
    assert summary.loc["noise_robustness", "mean"] == pytest.approx(2 * c * r / (c + r), rel=1e-9)
    assert summary.loc["noise_robustness", "n"] == n


# ------------------------------------------------------------------------------------------------- MPRT


def _fields():
    return dict(method="gradcam", method_params={}, target_layer="features.relu2")


def test_mprt_excludes_constant_maps_instead_of_scoring_them_as_a_pass(monkeypatch, caplog):
    torch.manual_seed(0)
    net = GapNet(n_classes=4, width=6).eval()
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = net(images).argmax(1)
    heat = cambench.explain(net, images, "gradcam", "features.relu2", targets=targets)
    assert (heat.flatten(1).amax(1) > heat.flatten(1).amin(1)).all()
    heat[2] = 0.0  # a constant original map (the engine stores one as zeros, flag bit 1)
    with caplog.at_level(logging.WARNING, logger="cambench.metrics.sanity"):
        values, applies = evaluate_applies(net, images, heat, "mprt", targets=targets, seed=1, **_fields())
    assert torch.isfinite(values).all()
    assert not applies[2] and applies[[0, 1, 3, 4, 5]].all()
    assert "constant" in caplog.text and "excluded" in caplog.text
    # a randomised copy whose map is constant: no similarity to compare either, not a perfect pass (0)
    from cambench.metrics import sanity

    def flat_second(x, methods, imgs, model=None):
        maps = torch.rand(imgs.shape[0], *imgs.shape[2:], generator=torch.Generator().manual_seed(2))
        maps[1] = 0.0
        yield slice(None), {m: maps for m in methods}

    monkeypatch.setattr(sanity, "explained_batches", flat_second)
    heat[2] = torch.rand(16, 16)
    values, applies = evaluate_applies(net, images, heat, "mprt", targets=targets, seed=1, **_fields())
    assert torch.isfinite(values).all() and applies.tolist() == [True, False, True, True, True, True]
