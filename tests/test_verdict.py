"""The verdict (best method per metric family, ties, identities, caveats) and the report's size budget."""
import io
import zipfile

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_report import HOSTILE, Tags

from cambench.engine import METHODS, CamResult, register_method
from cambench.metrics import METRICS
from cambench.plots import _save_bounded
from cambench.store import HeatmapWriter
from cambench.verdict import (
    EMBED_FACTOR,
    GALLERY_SHARE,
    MAX_GALLERY_BYTES,
    gallery_byte_cap,
    identical_map_groups,
    identity_note,
    our_reading,
    report_levels,
    table_byte_budget,
    verdict_html,
    verdict_summary_html,
    verdict_table,
    zip_tables,
)


def _summary(rows, n=80):
    """metric_summary rows from (method, perturbation, level, metric, mean), CI = mean -+ 0.01."""
    return pd.DataFrame([dict(dataset="d", model="m", method=method, perturbation=kind, level=level, metric=metric,
                              mean=mean, ci_low=mean - 0.01, ci_high=mean + 0.01, n=n)
                         for method, kind, level, metric, mean in rows])


def _posthoc(pairs, kind="none", level=0.0):
    """Wilcoxon rows from {(a, b, metric): p_adj}, plus a Nemenyi row that must be ignored."""
    rows = [dict(dataset="d", model="m", perturbation=kind, level=level, metric=metric, test="wilcoxon",
                 design="paired", groups=",".join(sorted([a, b])), p_adj=p, family="block")
            for (a, b, metric), p in pairs.items()]
    rows += [dict(rows[0], test="nemenyi", p_adj=0.0)] if rows else []
    return pd.DataFrame(rows, columns=["dataset", "model", "perturbation", "level", "metric", "test", "design",
                                       "groups", "p_adj", "family"])


# Localisation on clean images: pointing_game (higher better), hd95 (lower better).
# a: best on both; b: close, tests cannot separate it from a; c: worse, significantly;
# e: significantly better than a on hd95 but worst on pointing_game (the metrics disagree).
LOCALISATION = [("a", "none", 0.0, "pointing_game", 0.9), ("b", "none", 0.0, "pointing_game", 0.85),
                ("c", "none", 0.0, "pointing_game", 0.5), ("e", "none", 0.0, "pointing_game", 0.4),
                ("a", "none", 0.0, "hd95", 2.0), ("b", "none", 0.0, "hd95", 3.0),
                ("c", "none", 0.0, "hd95", 9.0), ("e", "none", 0.0, "hd95", 1.0)]
TESTS = {("a", "b", "pointing_game"): 0.3, ("a", "b", "hd95"): float("nan"),  # no test: counts as no difference
         ("a", "c", "pointing_game"): 0.001, ("a", "c", "hd95"): 0.2,
         ("a", "e", "pointing_game"): 0.01, ("a", "e", "hd95"): 0.01}


def test_verdict_best_ties_and_disagreements():
    table = verdict_table(_summary(LOCALISATION), _posthoc(TESTS), alpha=0.05)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.metric_family, row.perturbation, row.level) == ("localisation", "none", 0.0)
    # ranks per metric (0 = best): pointing_game a 0, b 1/3, c 2/3, e 1; hd95 e 0, a 1/3, b 2/3, c 1
    assert row.best == "a" and row.score == pytest.approx(1 / 6) and row.n_metrics == 2
    assert row.not_different == "b" and row.different == "c;e"
    assert row.better_somewhere == "e (hd95)"
    assert row.best_values == "hd95: 2 [1.99, 2.01]; pointing_game: 0.9 [0.89, 0.91]"
    assert (row.test, row.design, row.p_adj_family, row.alpha) == ("wilcoxon", "paired", "block", 0.05)
    assert row.n_images == 80 and row.caveats == ""


def test_verdict_ties_robustness_levels_and_caveats():
    rows = [("x", "none", 0.0, "sparseness", 0.5), ("y", "none", 0.0, "sparseness", 0.5),
            ("x", "none", 0.0, "complexity", 3.0), ("y", "none", 0.0, "complexity", 3.0),
            ("x", "none", 0.0, "flip_rate", 0.0),  # no better direction: never ranked
            ("x", "gaussian", 0.1, "consistency", 0.9), ("y", "gaussian", 0.1, "consistency", 0.2),
            ("x", "gaussian", 0.3, "consistency", 0.3), ("y", "gaussian", 0.3, "consistency", 0.8),
            ("x", "none", 0.0, "relative_drop", 0.1), ("y", "none", 0.0, "relative_drop", 0.2)]
    table = verdict_table(_summary(rows, n=12), _posthoc({("x", "y", "sparseness"): 0.5}), alpha=0.05,
                          standin={"d": "shapes"}, reading=our_reading())
    by = {(r.metric_family, r.perturbation, r.level): r for r in table.itertuples()}
    assert set(by) == {("complexity", "none", 0.0), ("robustness", "gaussian", 0.3), ("faithfulness", "none", 0.0)}
    assert by[("complexity", "none", 0.0)].best == "x;y"  # equal means: both best
    assert by[("robustness", "gaussian", 0.3)].best == "y"  # the kind's strongest level, not 0.1
    faithfulness = by[("faithfulness", "none", 0.0)]
    assert faithfulness.best == "y" and "no wilcoxon rows" in faithfulness.caveats  # untested pair: said so
    for r in table.itertuples():
        assert "d is a synthetic stand-in (standin.kind shapes)" in r.caveats
        assert "few images (at least 12 per metric)" in r.caveats
    assert "our reading: metric(s) relative_drop" in faithfulness.caveats  # its registration says so
    real = verdict_table(_summary(rows), _posthoc({("x", "y", "sparseness"): 0.5}), standin={"d": "none"})
    assert not any("stand-in" in c or "few images" in c for c in real["caveats"])


def _heatmap_file(path, maps):
    n = len(next(iter(maps.values())))
    result = CamResult({m: torch.from_numpy(v) for m, v in maps.items()},
                       {m: torch.zeros(n, 2, 2) for m in maps}, {m: torch.zeros(n, dtype=torch.uint8) for m in maps},
                       torch.zeros(n, 3), torch.zeros(n, dtype=torch.long), torch.ones(n))
    with HeatmapWriter(path, np.array([f"i{k}" for k in range(n)]), np.zeros(n), {m: {} for m in maps},
                       dtype="float32", store="input") as writer:
        writer.write(0, result)


def test_identical_maps_are_found_on_every_image(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random((7, 6, 6), dtype=np.float32)
    late = base.copy()
    late[6, 5, 5] += 0.01  # differs on the last image only: the chunked reading must get there
    maps = {"cam": base, "gradcam": base + 4e-4, "hirescam": base - 5e-4, "layercam": late,
            "other": rng.random((7, 6, 6), dtype=np.float32)}
    _heatmap_file(tmp_path / "h.h5", maps)
    groups = identical_map_groups(tmp_path / "h.h5", chunk=2)
    assert groups == [["cam", "gradcam", "hirescam"]]  # hirescam - gradcam = 9e-4 is within 1e-3
    note = identity_note(groups[0])
    assert note.startswith("cam = gradcam = hirescam: identical maps") and "GAP + linear head" in note
    assert "GAP" not in identity_note(["layercam", "other"], {"other": {"method": "eigencam"}})
    assert "GAP" in identity_note(["mine", "other"], {"mine": {"method": "cam"}, "other": {"method": "xgradcam"}})

    summary = _summary([(m, "none", 0.0, "sparseness", v) for m, v in
                        [("cam", 0.8), ("gradcam", 0.8), ("hirescam", 0.8), ("layercam", 0.5)]])
    row = verdict_table(summary, _posthoc({("cam", "layercam", "sparseness"): 0.01}),
                        identities={("d", "m"): groups}).iloc[0]
    assert row.best == "cam;gradcam;hirescam" and row.identical_maps == "cam = gradcam = hirescam"
    assert "gradcam (= cam = hirescam)" in verdict_html(pd.DataFrame([row]))


def test_verdict_pages_escape_user_text():
    rows = [(HOSTILE, "none", 0.0, "sparseness", 0.9), ("b", "none", 0.0, "sparseness", 0.1)]
    summary = _summary(rows).assign(dataset=HOSTILE)
    table = verdict_table(summary, _posthoc({}), standin={HOSTILE: "shapes"})
    assert table.iloc[0].best == HOSTILE
    for page in (verdict_html(table, {(HOSTILE, "m"): [HOSTILE]}), verdict_summary_html(table)):
        parsed = Tags()
        parsed.feed(page)
        assert "img" not in parsed.tags and "script" not in parsed.tags
        assert "".join(parsed.text).count(HOSTILE) >= 2  # the dataset and the method, shown as text


# The names README's method and metric tables marked as our reading when the flag replaced them
# (docs/methods.md §6): a name leaves or joins the set by its registration's our_reading=.
OUR_READING = {"ablation_area", "ablation_drop", "ablation_flip", "amecam", "box_iou", "cfcam", "conservation_residual",
               "consistency", "eigencam", "eigengradcam", "finercam", "flip_rate", "hd95", "layercam_ms", "metacam",
               "micam", "noise_robustness", "relative_drop", "responsiveness", "sensitivity_correlation",
               "sensitivity_residual"}


def test_our_reading_comes_from_the_registrations():
    assert our_reading() == OUR_READING
    for registry in (METHODS, METRICS):
        for name in OUR_READING & set(registry.names()):
            text = registry.get(name).meta["our_reading"]
            assert isinstance(text, str) and len(text) > 10  # says what is our reading
    # a method registered with the flag joins the set, and its label is named in the verdict's caveats
    register_method("test_read_method", our_reading="all of it")(lambda x: x.activations.sum(1))
    try:
        assert our_reading() == OUR_READING | {"test_read_method"}
        rows = [("label", "none", 0.0, "sparseness", 0.5), ("gradcam", "none", 0.0, "sparseness", 0.5)]
        table = verdict_table(_summary(rows), _posthoc({}), reading=our_reading(),
                              methods={"label": {"method": "test_read_method"}, "gradcam": {}})
        assert "our reading (docs/methods.md §6): method(s) label" in table.iloc[0].caveats
        assert "gradcam" not in table.iloc[0].caveats
    finally:
        del METHODS._entries["test_read_method"]


PAPER_SWEEP = [("none", 0.0)] + [(kind, level) for kind in ["gaussian", "shot", "speckle", "salt_and_pepper",
                                                            "gaussian_blur", "jpeg", "brightness", "contrast",
                                                            "fgsm", "pgd"] for level in [0.5, 1, 2, 4, 8]]


def test_report_levels_and_gallery_budget_for_a_51_level_sweep():
    assert len(PAPER_SWEEP) == 51
    strongest = report_levels(PAPER_SWEEP, 1)
    assert len(strongest) == 11 and strongest[0] == ("none", 0.0)
    assert all(level == 8 for kind, level in strongest[1:])
    two = report_levels(PAPER_SWEEP, 2)
    assert len(two) == 21 and ("pgd", 0.5) in two and ("pgd", 8.0) in two and ("pgd", 2.0) not in two
    assert [lv for k, lv in report_levels(PAPER_SWEEP, 3) if k == "jpeg"] == [0.5, 2.0, 8.0]
    assert report_levels(PAPER_SWEEP, 0) == [("none", 0.0)] and len(report_levels(PAPER_SWEEP, 9)) == 51
    with pytest.raises(ValueError, match="gallery_levels"):
        report_levels(PAPER_SWEEP, -1)
    for n_galleries in (6, 11, 21, 500):  # galleries never exceed their share, whatever their number
        cap = gallery_byte_cap(25, n_galleries)
        assert 0 < cap <= MAX_GALLERY_BYTES and n_galleries * cap * EMBED_FACTOR <= GALLERY_SHARE * 25e6


def test_gallery_image_fits_its_pixel_and_byte_caps(tmp_path):
    fig, ax = plt.subplots(figsize=(20, 10))
    ax.imshow(np.random.default_rng(0).random((200, 400, 3)))  # noise: nothing compresses it for free
    fig.text(1.4, 0.5, "beyond the figure")  # the tight bounding box grows past the figure's size
    _save_bounded(fig, tmp_path / "g.jpg", max_px=1000, max_bytes=40_000)
    data = (tmp_path / "g.jpg").read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and max(image.size) <= 1000 and len(data) <= 40_000
    assert max(image.size) >= 300  # reduced, not destroyed
    fig, ax = plt.subplots(figsize=(20, 10))
    fig.text(1.4, 0.5, "beyond the figure")
    _save_bounded(fig, tmp_path / "g.png", max_px=1000, max_bytes=None)  # no byte cap: pixels alone bound it
    image = Image.open(tmp_path / "g.png")
    assert image.format == "PNG" and max(image.size) == 1000


def _big_table(path, levels):
    rng = np.random.default_rng(1)
    rows = [dict(dataset="d", model="m", perturbation=kind, level=level, metric=f"m{j}", p=rng.random())
            for kind, level in levels for j in range(400)]
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.6g")


def _unzip(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        table = pd.read_csv(io.BytesIO(z.read([n for n in names if n.endswith(".csv")][0])))
        note = z.read("README.txt").decode() if "README.txt" in names else ""
    return table, note


def test_zipped_tables_keep_the_budget(tmp_path):
    _big_table(tmp_path / "big.csv", PAPER_SWEEP)
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "small.csv", index=False)
    tables = {"big": (tmp_path / "big.csv", tmp_path / "big.csv.zip"),
              "small": (tmp_path / "small.csv", tmp_path / "small.csv.zip")}
    original = pd.read_csv(tmp_path / "big.csv")
    keep = report_levels(PAPER_SWEEP, 1)

    zip_tables(tables, 10_000_000, keep)  # fits: the CSVs themselves, unchanged
    assert zipfile.ZipFile(tmp_path / "big.csv.zip").read("big.csv") == (tmp_path / "big.csv").read_bytes()
    assert _unzip(tmp_path / "big.csv.zip")[1] == ""

    def total():
        return sum(p.stat().st_size for _, p in tables.values())

    budget = int(total() * 0.5)  # the full table no longer fits: the report's 11 levels do
    held = zip_tables(tables, budget, keep)
    big, note = _unzip(tmp_path / "big.csv.zip")
    assert total() <= budget and "levels the report shows" in held["big"] and "Excerpt" in note
    assert len(big) == 11 * 400 and set(zip(big.perturbation, big.level)) == set(keep)
    expected = original[[(k, lv) in set(keep) for k, lv in zip(original.perturbation, original.level)]]
    assert np.array_equal(big["p"].to_numpy(), expected["p"].to_numpy())  # values unchanged
    assert _unzip(tmp_path / "small.csv.zip")[0]["a"].tolist() == [1, 2]  # the small one is left whole

    zip_tables(tables, int(total() * 0.3), keep)  # clean rows only
    assert set(_unzip(tmp_path / "big.csv.zip")[0].perturbation) == {"none"}

    tiny = 1500  # not even the clean rows fit: the first rows that do
    zip_tables(tables, tiny, keep)
    big, note = _unzip(tmp_path / "big.csv.zip")
    assert total() <= tiny and 0 < len(big) < 400 and "first" in note
    assert table_byte_budget(25) * EMBED_FACTOR == pytest.approx(0.2 * 25e6, rel=1e-6)
