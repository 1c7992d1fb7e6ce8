"""SyCAM (docs/methods.md §2.14, our reading): grammar, parser, evaluator, search and the method."""
import math
from collections import OrderedDict

import pytest
import torch
from conftest import GapNet
from torch import nn

import cambench
from cambench.engine import FLAG_NONFINITE, METHODS, CamError, capture, postprocess
from cambench.sycam import (
    BINARY_OPS,
    Binary,
    Const,
    Terminal,
    Unary,
    canonical,
    evaluate_expression,
    format_expression,
    map_equivalence_key,
    parse,
    read_expression,
    safe_div,
    synthesise,
    write_expression,
)

GRADIENT_TERMINALS = ["gradcam", "gradcampp", "xgradcam", "relu_grad", "act_mean"]


# --------------------------------------------------------------------------------------------
# A planted problem with a known answer
# --------------------------------------------------------------------------------------------

def planted_model(dims=2):
    """Three detector channels (identity 1x1 conv + ReLU) -> GAP -> linear; class 0 is explained.

    Channel 0 sees the object (head weight 30), channel 1 a one-pixel distractor (weight 100),
    channel 2 a large second distractor (weight -50). Per pixel the distractor's contribution is
    the largest, so Grad-CAM (weights = head weights / Z) peaks on it; the large distractor has the
    largest mean activation, so act_mean peaks there. The object carries most of the class
    evidence (30 x area 25 >> 100 x 1), which channel weights mean(G) * mean(A) (the channel's
    share of the logit) or the forward-pass terminals (Score, Ablation) recover: pointing game 1.
    """
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(OrderedDict(conv=conv(3, 3, 1), relu=nn.ReLU())),
        pool=nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1),
        flat=nn.Flatten(), fc=nn.Linear(3, 2)))
    with torch.no_grad():
        model.features.conv.weight.copy_(torch.eye(3).view(3, 3, *([1] * dims)))
        model.features.conv.bias.zero_()
        model.fc.weight.copy_(torch.tensor([[30.0, 100.0, -50.0], [0.0, 0.0, 0.0]]))
        model.fc.bias.copy_(torch.tensor([20.0, 0.0]))  # keeps the class-0 logit positive (Ablation-CAM divides by it)
    return model.eval()


def planted_data(n, dims=2, size=20, sides=(5, 1, 8), seed=0):
    """Object (mask), one-voxel distractor and large distractor: non-touching boxes, one per channel."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros((n, 3) + (size,) * dims)
    masks = torch.zeros((n,) + (size,) * dims, dtype=torch.bool)
    for i in range(n):
        while True:
            corners = [torch.randint(1, size - s, (dims,), generator=gen) for s in sides]
            apart = all(any((corners[a][d] + sides[a] + 1 <= corners[b][d])
                            or (corners[b][d] + sides[b] + 1 <= corners[a][d])
                            for d in range(dims)) for a, b in ((0, 1), (0, 2), (1, 2)))
            if apart:
                break
        for c, (corner, side) in enumerate(zip(corners, sides)):
            box = tuple(slice(int(v), int(v) + side) for v in corner)
            images[(i, c) + box] = 1.0
            if c == 0:
                masks[(i,) + box] = True
    return images, masks


POINT = {"tolerance_px": 0}


def pointing(model, images, masks, expression):
    maps = cambench.explain(model, images, "sycam", "features", targets=[0] * len(images), expression=expression)
    return cambench.evaluate(model, images, maps, "pointing_game", targets=torch.zeros(len(images), dtype=torch.long),
                             masks=masks, **POINT).mean().item()


# --------------------------------------------------------------------------------------------
# Grammar and parser
# --------------------------------------------------------------------------------------------

CANONICAL = ["gradcam", "relu(gradcam) * act_mean + 0.5", "gradcam - (xgradcam - score)", "(gradcam + 1) * 2",
             "gradcam * (act_mean * score)", "max(gradcam, min(act_mean, 2)) / neg(ablation)",
             "relu_grad / (gradcampp / 0.5)", "1e-05 * score - relu(neg(act_mean))", "0.25"]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_texts_round_trip(text):
    assert format_expression(parse(text)) == text


def test_loose_texts_print_canonically():
    assert canonical("  relu( gradcam )*act_mean+0.5") == "relu(gradcam) * act_mean + 0.5"
    assert canonical("-gradcam") == "neg(gradcam)"
    assert canonical("2.0*((gradcam))") == "2 * gradcam"
    assert canonical("gradcam-xgradcam-score") == "gradcam - xgradcam - score"
    assert parse("gradcam - xgradcam - score") == Binary("-", Binary("-", Terminal("gradcam"), Terminal("xgradcam")),
                                                          Terminal("score"))
    assert parse("1 + 2 * score") == Binary("+", Const(1), Binary("*", Const(2), Terminal("score")))


def _all_trees(size, leaves):
    if size == 1:
        yield from leaves
        return
    for arg in _all_trees(size - 1, leaves):
        yield Unary("relu", arg)
        yield Unary("neg", arg)
    for left_size in range(1, size - 1):
        for op in BINARY_OPS:
            for left in _all_trees(left_size, leaves):
                for right in _all_trees(size - 1 - left_size, leaves):
                    yield Binary(op, left, right)


def test_every_small_tree_round_trips_and_prints_uniquely():
    leaves = [Terminal("gradcam"), Terminal("score"), Const(0.5), Const(2)]
    texts = {}
    for size in range(1, 6):
        for tree in _all_trees(size, leaves):
            text = format_expression(tree)
            assert parse(text) == tree, text
            assert texts.setdefault(text, tree) == tree, f"two trees print as {text!r}"
    assert len(texts) == 4 + 8 + 112 + 608 + 6976   # t(s) = 2 t(s-1) + 6 sum_i t(i) t(s-1-i)


@pytest.mark.parametrize("text,message", [
    ("gradcam + foo", r"unknown terminal 'foo'.*position 10"),
    ("foo(gradcam)", r"unknown function 'foo'"),
    ("relu(gradcam", r"unbalanced parentheses: '\(' is never closed at position 4"),
    ("(gradcam + score", r"unbalanced parentheses: '\(' is never closed at position 0"),
    ("gradcam)", r"unbalanced parentheses: '\)' without a matching '\(' at position 7"),
    ("gradcam act_mean", r"unexpected trailing token 'act_mean'.*position 8"),
    ("gradcam 2", r"unexpected trailing token '2'"),
    ("", r"empty expression"),
    ("gradcam +", r"operand is missing"),
    ("max(gradcam)", r"max takes 2 argument\(s\), got 1"),
    ("relu(gradcam, score)", r"relu takes 1 argument\(s\), got 2"),
    ("relu * gradcam", r"'relu' is a function"),
    ("gradcam ^ 2", r"unexpected character '\^'"),
])
def test_parse_errors_name_the_problem(text, message):
    with pytest.raises(CamError, match=message):
        parse(text)


def test_constants_must_be_finite_and_non_negative():
    with pytest.raises(CamError, match="finite and >= 0"):
        Const(-1.0)
    with pytest.raises(CamError, match="finite and >= 0"):
        Const(math.inf)


# --------------------------------------------------------------------------------------------
# Evaluator and the sycam method
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("terminal,method", [("gradcam", "gradcam"), ("xgradcam", "xgradcam"),
                                             ("gradcampp", "gradcampp"), ("score", "scorecam"),
                                             ("ablation", "ablationcam")])
def test_single_terminal_expressions_are_the_registered_methods(gapnet, images, terminal, method):
    result = cambench.explain_many(gapnet, images, {method: {}, "sycam": {"expression": terminal}}, "features")
    assert torch.equal(result.raw["sycam"], result.raw[method])
    assert torch.equal(result.maps["sycam"], result.maps[method])


def test_default_expression_is_gradcam(gapnet, images):
    assert torch.equal(cambench.explain(gapnet, images, "sycam", "features"),
                       cambench.explain(gapnet, images, "gradcam", "features"))


def test_composite_weights_match_a_hand_computation(gapnet, images):
    x = capture(gapnet, images, "features")
    g, a = x.gradients, x.activations
    expected = ((g.clamp_min(0).mean(dim=(2, 3)) * a.mean(dim=(2, 3)) + 0.5)
                - torch.maximum(g.mean(dim=(2, 3)), torch.tensor(0.0)))
    got = METHODS.get("sycam").fn(x, expression="relu_grad * act_mean + 0.5 - max(gradcam, 0)")
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert METHODS.get("sycam").fn(x, expression="2").shape == (6, 8)
    assert torch.equal(METHODS.get("sycam").fn(x, expression="2"), torch.full((6, 8), 2.0))


class CountRows(nn.Module):
    """Counts the images (rows) the wrapped model evaluates.

    The count is kept by a pre-hook on the first convolution, a leaf module, so that it also
    counts the forwards of the engine's inference copy (a traced deep copy shares the hook).
    """

    def __init__(self, model):
        super().__init__()
        self.model, self._count = model, [0]
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
        first.register_forward_pre_hook(lambda _m, args: self._count.__setitem__(0, self._count[0] + args[0].shape[0]))

    @property
    def rows(self) -> int:
        return self._count[0]

    @rows.setter
    def rows(self, value: int) -> None:
        self._count[0] = value

    def forward(self, x):
        return self.model(x)


def test_gradients_and_forward_terminals_only_when_used(images):
    need = METHODS.get("sycam").meta["needs_gradients"]
    assert need({}) and need({"expression": "relu(gradcam) * 2"}) and need({"expression": "relu_grad + score"})
    assert not need({"expression": "act_mean * score + ablation"}) and not need({"expression": "0.5"})
    torch.manual_seed(0)
    model = CountRows(GapNet())
    cambench.explain(model, images, "sycam", "model.features", expression="act_mean * 2")
    assert model.rows == 6                                  # the capture only
    model.rows = 0
    cambench.explain(model, images, "sycam", "model.features", expression="relu(gradcam) + score")
    # + one masked input per (image, channel), + the inference copy's check of its logits on the
    # batch (once per model: the copy is cached)
    assert model.rows == 6 + 6 * 8 + 6


def test_safe_division_never_gives_nan_or_inf(gapnet, images):
    num = torch.tensor([0.0, 1.0, 3.0, 1e30, -2.0])
    den = torch.tensor([0.0, 1e-13, 2.0, 1e-11, -1e-12])
    out = safe_div(num, den)
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.tensor([0.0, 0.0, 1.5, 0.0, 2e12]))   # 1e30 / 1e-11 overflows float32 -> 0
    with torch.no_grad():
        gapnet.features.conv2.weight[:4] = 0   # four channels with all-zero activations: act_mean = 0
        gapnet.features.conv2.bias[:4] = -1
    expression = "gradcam / (gradcam - gradcam) + 1 / act_mean"
    result = cambench.explain_many(gapnet, images, {"sycam": {"expression": expression}}, "features")
    assert torch.isfinite(result.raw["sycam"]).all() and not (result.flags["sycam"] & FLAG_NONFINITE).any()
    x = capture(gapnet, images, "features")
    w = evaluate_expression("1 / act_mean", {"act_mean": x.activations.mean(dim=(2, 3))})
    assert torch.equal(w[:, :4], torch.zeros(6, 4)) and (w[:, 4:] > 0).all()


def test_bad_method_parameters(gapnet, images, tmp_path):
    with pytest.raises(CamError, match="unknown terminal 'gradcm'"):
        cambench.explain(gapnet, images, "sycam", "features", expression="relu(gradcm)")
    with pytest.raises(CamError, match=r"parameter 'chunk_size' of method 'sycam' must be an integer in \[0, inf\)"):
        cambench.explain_many(gapnet, images, {"sycam": {"expression": "score", "chunk_size": -1}}, "features")
    with pytest.raises(CamError, match="does not exist"):
        cambench.explain(gapnet, images, "sycam", "features", expression=f"file:{tmp_path / 'missing.txt'}")
    (tmp_path / "two.txt").write_text("gradcam\nact_mean\n")
    with pytest.raises(CamError, match="exactly one expression line, found 2"):
        cambench.explain(gapnet, images, "sycam", "features", expression=f"file:{tmp_path / 'two.txt'}")
    (tmp_path / "bad.txt").write_text("gradcam +\n")
    with pytest.raises(CamError, match="operand is missing"):
        cambench.explain(gapnet, images, "sycam", "features", expression=f"file:{tmp_path / 'bad.txt'}")
    with pytest.raises(CamError, match="must be followed by a path"):
        cambench.explain(gapnet, images, "sycam", "features", expression="file:")


def test_expression_files_are_written_atomically_and_read_back(tmp_path):
    path = write_expression(tmp_path / "sub" / "best.txt", "relu( gradcam )*act_mean",
                            comment="metric: pointing_game\nscore: 1")
    assert path.read_text() == "# metric: pointing_game\n# score: 1\nrelu(gradcam) * act_mean\n"
    assert read_expression(path) == parse("relu(gradcam) * act_mean")
    assert [p.name for p in path.parent.iterdir()] == ["best.txt"]   # no temp file left behind
    with pytest.raises(CamError, match="unknown terminal"):
        write_expression(tmp_path / "x.txt", "bogus")
    assert not (tmp_path / "x.txt").exists()


# --------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------

def test_map_equivalence_key_is_invariant_to_positive_scaling_only():
    torch.manual_seed(0)
    w = torch.randn(5, 7)
    factor = torch.rand(5, 1) + 0.1
    assert map_equivalence_key(w) == map_equivalence_key(3 * w) == map_equivalence_key(w * factor)
    assert map_equivalence_key(-w) != map_equivalence_key(w)
    bumped = w.clone()
    bumped[2, 3] += 1e-3
    assert map_equivalence_key(bumped) != map_equivalence_key(w)


def test_equivalence_pruning_drops_positive_multiples():
    model = planted_model()
    images, masks = planted_data(8)
    result = synthesise(model, images, "features", masks=masks, targets=[0] * 8, metric_params=POINT, max_size=3,
                        terminals=["gradcam"], constants=[2], operators=["*", "neg"])
    scored = [row[0] for row in result.table]
    assert result.pruned["2 * gradcam"] == "gradcam"   # same maps: dropped before the metric
    assert "2 * gradcam" not in scored
    assert result.pruned["neg(neg(gradcam))"] == "gradcam"
    assert scored == ["2", "gradcam", "neg(gradcam)", "gradcam * gradcam"]   # negation changes the maps


def test_search_finds_a_forward_pass_terminal_where_gradients_mislead():
    model = planted_model()
    images, masks = planted_data(12)
    result = synthesise(model, images, "features", masks=masks, targets=[0] * 12, metric_params=POINT, max_size=1)
    assert result.maximise and result.metric == "pointing_game"
    scores = {expr: score for expr, _, score in result.table}
    assert scores["gradcam"] == scores["gradcampp"] == scores["act_mean"] == 0.0
    assert scores["score"] == scores["ablation"] == 1.0
    assert result.best_expression == "ablation" and result.best_score == 1.0   # ties: size, then text
    assert result.pruned["xgradcam"] == "gradcam"   # identity 1: XGrad-CAM = Grad-CAM on GAP + linear


def test_search_composes_gradient_terminals_and_the_winner_generalises(tmp_path):
    """With gradient terminals and act_mean only, no expression of size <= 2 finds the object;
    size 3 does (e.g. gradcam * act_mean, each channel's share of the logit)."""
    model = planted_model()
    images, masks = planted_data(12)
    kwargs = dict(masks=masks, targets=[0] * 12, metric_params=POINT, max_size=3, terminals=GRADIENT_TERMINALS)
    result = synthesise(model, images, "features", **kwargs)
    assert max(score for _, size, score in result.table if size <= 2) < 1.0
    assert result.score_of("gradcam") == 0.0 and result.score_of("gradcam * act_mean") == 1.0
    assert result.best_score == 1.0 and result.best_size == 3 and result.stopped == "max_size"
    best_of_size_3 = sorted(expr for expr, size, score in result.table if size == 3 and score == 1.0)[0]
    assert result.best_expression == best_of_size_3
    again = synthesise(model, images, "features", **kwargs)
    assert again.table == result.table and again.pruned == result.pruned          # deterministic

    path = write_expression(tmp_path / "best.txt", result.best_expression, comment=f"score {result.best_score}")
    held_out, held_masks = planted_data(10, seed=1)
    assert pointing(model, held_out, held_masks, f"file:{path}") == 1.0
    assert pointing(model, held_out, held_masks, "gradcam") == 0.0
    from_file = cambench.explain(model, held_out, "sycam", "features", expression=f"file:{path}")
    from_text = cambench.explain(model, held_out, "sycam", "features", expression=result.best_expression)
    assert torch.equal(from_file, from_text)


def test_scores_from_a_sample_batch_equal_those_from_one_batch():
    """Equivalence on the first batch only, full evaluation of the survivors on every image."""
    model = planted_model()
    images, masks = planted_data(12)
    kwargs = dict(masks=masks, targets=[0] * 12, metric_params=POINT, max_size=3, terminals=GRADIENT_TERMINALS)
    whole = dict((e, s) for e, _, s in synthesise(model, images, "features", **kwargs).table)
    batched = synthesise(model, images, "features", batch_size=5, **kwargs)
    common = [e for e, _, _ in batched.table if e in whole]
    assert len(common) > 20
    assert all(whole[e] == s for e, _, s in batched.table if e in whole)
    assert batched.best_score == 1.0


def test_terminals_are_computed_once_for_the_whole_search():
    model = CountRows(planted_model())
    images, masks = planted_data(6)
    counts = []
    for max_size in (1, 3):
        model.rows = 0
        synthesise(model, images, "model.features", masks=masks, targets=[0] * 6, metric_params=POINT,
                   max_size=max_size, terminals=["score", "act_mean"])
        counts.append(model.rows)
    # capture + one masked input per (image, channel); the first search also checks the inference
    # copy's logits on the batch, the second reuses the cached copy
    assert counts == [6 + 6 * 3 + 6, 6 + 6 * 3]


def test_lower_is_better_metrics_are_minimised(gapnet, images):
    params = {"substrate": "zero", "steps": 4}
    result = synthesise(gapnet, images, "features", metric="deletion_auc", metric_params=params, max_size=2,
                        terminals=["gradcam", "act_mean"])
    assert not result.maximise
    scores = [s for _, _, s in result.table]
    assert result.best_score == min(scores) < max(scores)
    # The oracle is the metric of the engine's maps of the expression.
    maps = cambench.explain(gapnet, images, "sycam", "features", expression=result.best_expression)
    direct = cambench.evaluate(gapnet, images, maps, "deletion_auc", **params).mean().item()
    assert direct == pytest.approx(result.best_score, abs=1e-6)


def test_time_budget_stops_after_size_one(gapnet, images):
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    masks[:, 4:9, 4:9] = True
    result = synthesise(gapnet, images, "features", masks=masks, max_size=6, time_budget_s=1e-9,
                        terminals=["gradcam", "act_mean"])
    assert result.stopped == "time_budget"
    assert {size for _, size, _ in result.table} == {1}


def test_search_parameter_errors(gapnet, images):
    masks = torch.zeros(6, 16, 16, dtype=torch.bool)
    with pytest.raises(CamError, match="needs ground-truth 'masks'"):
        synthesise(gapnet, images, "features")
    with pytest.raises(CamError, match="terminals must be a non-empty subset"):
        synthesise(gapnet, images, "features", masks=masks, terminals=["gradcam", "grad"])
    with pytest.raises(CamError, match="max_size must be an integer >= 1"):
        synthesise(gapnet, images, "features", masks=masks, max_size=0)
    with pytest.raises(CamError, match="constants must be finite and >= 0"):
        synthesise(gapnet, images, "features", masks=masks, constants=[-1])
    with pytest.raises(CamError, match="unknown operator"):
        synthesise(gapnet, images, "features", masks=masks, operators=["**"])
    with pytest.raises(CamError, match="reference heatmaps"):
        synthesise(gapnet, images, "features", metric="consistency")
    with pytest.raises(CamError, match="masks .* must be"):
        synthesise(gapnet, images, "features", masks=masks[:, :8])
    with pytest.raises(Exception, match="unknown metric 'bogus'"):
        synthesise(gapnet, images, "features", metric="bogus")
    with pytest.raises(ValueError, match="unknown parameter"):
        synthesise(gapnet, images, "features", masks=masks, metric_params={"tolerance": 3})


# --------------------------------------------------------------------------------------------
# 3D
# --------------------------------------------------------------------------------------------

def test_3d_search_and_method():
    model = planted_model(dims=3)
    volumes, masks = planted_data(8, dims=3, size=12, sides=(3, 1, 5))
    result = synthesise(model, volumes, "features", masks=masks, targets=[0] * 8, metric_params=POINT, max_size=3,
                        terminals=GRADIENT_TERMINALS + ["score"])
    assert result.score_of("gradcam") == 0.0 and result.score_of("score") == 1.0
    assert result.score_of("gradcam * act_mean") == 1.0 and result.best_expression == "score"
    assert pointing(model, volumes, masks, result.best_expression) == 1.0

    torch.manual_seed(0)
    gap3d = GapNet(dims=3, in_channels=1).eval()
    x = torch.randn(2, 1, 6, 8, 8)
    res = cambench.explain_many(gap3d, x, {"xgradcam": {}, "sycam": {"expression": "xgradcam"}}, "features")
    assert torch.equal(res.maps["sycam"], res.maps["xgradcam"])
    inputs = capture(gap3d, x, "features")
    weights = METHODS.get("sycam").fn(inputs, expression="relu(gradcam) * act_mean + ablation")
    expected = (inputs.gradients.mean(dim=(2, 3, 4)).clamp_min(0) * inputs.activations.mean(dim=(2, 3, 4))
                + METHODS.get("ablationcam").fn(inputs))
    torch.testing.assert_close(weights, expected)
    maps = cambench.explain(gap3d, x, "sycam", "features", expression="relu(gradcam) * act_mean + ablation")
    manual, _ = postprocess((expected[..., None, None, None] * inputs.activations).sum(dim=1), x.shape[2:])
    assert maps.shape == (2, 6, 8, 8)
    torch.testing.assert_close(maps, manual)
