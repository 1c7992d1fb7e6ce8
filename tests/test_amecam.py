"""AME-CAM (docs/methods.md §2.15): the multi-exit architecture, its two training phases, the method."""
import numpy as np
import pytest
import torch
from conftest import GapNet

import cambench
from cambench.data.synthetic import render
from cambench.engine import CamError, resolve_layer
from cambench.models import ARCHITECTURES, build_model, load_checkpoint, save_checkpoint
from cambench.models.multi_exit import (
    COS_CLAMP,
    _lambdas,
    aggregator_loss,
    sim_max,
    sim_min,
    train_aggregator,
    train_multi_exit,
)

CLASSES = ("disk", "cross")
PARAMS = {"n_classes": 2, "in_channels": 3, "widths": [8, 16, 32, 32], "aggregator_width": 16}


def planted(n_per_class, split, size=32):
    """Shapes with their object masks; the shape is the class, position and colour are random."""
    xs, ms, ys = [], [], []
    for label, shape in enumerate(CLASSES):
        for i in range(n_per_class):
            rng = np.random.default_rng([7, split, label, i])
            img, mask = render(shape, rng, size, scale=(0.15, 0.25), clutter=4, noise=0.04)
            xs.append(img), ms.append(mask), ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(np.stack(ms)), torch.tensor(ys)


@pytest.fixture(scope="module")
def trained():
    x, _, y = planted(160, split=0)
    xt, mt, yt = planted(40, split=1)
    torch.manual_seed(0)
    model = build_model("multi_exit_cnn", **PARAMS)
    exit_history = train_multi_exit(model, x, y, epochs=20, batch_size=32, lr=0.01, weight_decay=1e-4, seed=0)
    loss_before = aggregator_loss(model, x, y)
    agg_history = train_aggregator(model, x, y, epochs=5, batch_size=32, lr=0.01, seed=0)
    return dict(model=model.eval(), x=x, y=y, xt=xt, mt=mt, yt=yt, exit_history=exit_history,
                agg_history=agg_history, loss_before=loss_before, loss_after=aggregator_loss(model, x, y))


def amecam_maps(model, x, targets, **params):
    return cambench.explain(model, x, "amecam", "stages.-1", targets=targets, **params)


def test_registered_architecture_and_default_layer():
    entry = ARCHITECTURES.get("multi_exit_cnn")
    model = build_model("multi_exit_cnn", **PARAMS)
    assert resolve_layer(model, entry.meta["default_target_layer"]) is model.stages[-1]
    assert not hasattr(model, "cam_fc_layer")


def test_multi_exit_training_beats_chance(trained):
    model, xt, yt = trained["model"], trained["xt"], trained["yt"]
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    assert accuracy >= 0.75, accuracy  # 2 classes: chance 0.5
    history = trained["exit_history"]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert history[-1]["accuracy_exit4"] == history[-1]["train_accuracy"]


def test_exit_logits_are_gap_of_exit_maps(trained):
    model, x = trained["model"], trained["xt"][:6]
    with torch.no_grad():
        logits = model.exit_logits(x)
        outputs = model.exit_outputs(x)
        maps = model.exit_maps(x, torch.tensor([0, 1, 1, 0, 1, 0]))
        torch.testing.assert_close(model(x), logits[:, -1])
    assert logits.shape == (6, 4, 2)
    for level, out in enumerate(outputs):
        torch.testing.assert_close(out.mean(dim=(2, 3)), logits[:, level], rtol=1e-5, atol=1e-5)
    assert [o.shape[-1] for o in outputs] == [32, 16, 8, 8]
    assert maps.shape == (6, 4, 32, 32)
    deepest = torch.nn.functional.interpolate(outputs[-1], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps[:, -1], deepest[torch.arange(6), torch.tensor([0, 1, 1, 0, 1, 0])])


def test_lambdas_weight_the_exit_losses():
    assert _lambdas(None, 4).tolist() == [0.25, 0.5, 0.75, 1.0]
    x, _, y = planted(8, split=2)
    torch.manual_seed(0)
    model = build_model("multi_exit_cnn", **PARAMS)
    before = [head.weight.detach().clone() for head in model.exits]
    train_multi_exit(model, x, y, epochs=1, batch_size=8, lr=0.01, weight_decay=0.0, seed=0, lambdas=(0, 0, 0, 1))
    # Only the deepest exit has a loss: the other exit heads get no gradient at all.
    for head, old in zip(model.exits[:3], before[:3]):
        assert torch.equal(head.weight, old)
    assert not torch.equal(model.exits[3].weight, before[3])
    with pytest.raises(ValueError, match="lambdas must hold 4"):
        train_multi_exit(model, x, y, epochs=1, batch_size=8, lr=0.01, lambdas=(1, 1))


def test_training_is_deterministic_under_a_seed():
    x, _, y = planted(8, split=3)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("multi_exit_cnn", **PARAMS)
        train_multi_exit(model, x, y, epochs=2, batch_size=8, lr=0.01, seed=5)
        train_aggregator(model, x, y, epochs=2, batch_size=8, lr=0.01, seed=5)
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_simmax_and_simmin_known_answers():
    rows = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    # Oracle in NumPy: clamped cosines, rank in descending order per row, minus one (as the code).
    unit = rows.numpy() / np.linalg.norm(rows.numpy(), axis=1, keepdims=True)
    sim = np.clip(unit @ unit.T, *COS_CLAMP)
    rank = np.argsort(np.argsort(-sim, axis=1, kind="stable"), axis=1) - 1
    expected = np.mean(-np.log(sim) * np.exp(-0.25 * rank))
    assert sim_max(rows).item() == pytest.approx(expected, rel=1e-6)
    assert rank.diagonal().tolist() == [-1, -1, -1]  # a row is its own nearest neighbour
    # Orthogonal foreground and background: the cosine clamps to 0.0005.
    fg, bg = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    assert sim_min(fg, bg).item() == pytest.approx(-np.log(1 - COS_CLAMP[0]), rel=1e-4)
    assert sim_min(fg, fg).item() == pytest.approx(-np.log(1 - COS_CLAMP[1]), rel=1e-4)


def test_aggregator_training_lowers_the_contrastive_loss(trained):
    assert trained["loss_after"] < 0.9 * trained["loss_before"], (trained["loss_before"], trained["loss_after"])
    history = trained["agg_history"]
    assert history[-1]["loss"] < history[0]["loss"]
    parts = ("simmax_foreground", "simmin", "simmax_background")
    assert history[-1]["loss"] == pytest.approx(sum(history[-1][p] for p in parts), rel=1e-5)


def test_weights_sum_to_one_and_ame_is_a_convex_combination(trained):
    model, x, y = trained["model"], trained["xt"][:8], trained["yt"][:8]
    with torch.no_grad():
        maps, ame, weights = model.ame_maps(x, y)
    assert weights.shape == maps.shape == (8, 4, 32, 32) and ame.shape == (8, 32, 32)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8, 32, 32))
    torch.testing.assert_close(ame, (weights * maps).sum(dim=1))
    assert (ame >= maps.min(dim=1).values - 1e-5).all() and (ame <= maps.max(dim=1).values + 1e-5).all()


def test_amecam_localises_the_planted_object(trained):
    model, xt, mt, yt = trained["model"], trained["xt"], trained["mt"], trained["yt"]
    chance = mt.float().flatten(1).mean().item()   # a random peak hits the object this often
    hits = {}
    for invert in ("false", "auto", "true"):
        maps = amecam_maps(model, xt, yt, invert=invert)
        hits[invert] = cambench.evaluate(model, xt, maps, "pointing_game", targets=yt, masks=mt,
                                         tolerance_px=0).nanmean().item()
    assert hits["false"] > chance + 0.25, (hits, chance)
    assert hits["auto"] > chance + 0.25, (hits, chance)
    assert hits["true"] < hits["false"]  # the code's inversion points at the background here
    ame_only = amecam_maps(model, xt, yt, invert="false", include_exits=False)
    hit = cambench.evaluate(model, xt, ame_only, "pointing_game", targets=yt, masks=mt, tolerance_px=0)
    assert hit.nanmean().item() > chance + 0.25


def test_final_map_is_mean_of_exits_and_ame_then_min_max(trained):
    model, x, y = trained["model"], trained["xt"][:6], trained["yt"][:6]
    with torch.no_grad():
        maps, ame, _ = model.ame_maps(x, y)
    mean = torch.cat([maps, ame[:, None]], dim=1).mean(dim=1)
    methods = {"amecam": {"invert": "false"}}
    for include_exits, expected in ((True, mean), (False, ame)):
        methods["amecam"]["include_exits"] = include_exits
        result = cambench.explain_many(model, x, methods, "stages.-1", targets=y)
        lo = expected.flatten(1).min(1).values.view(-1, 1, 1)
        hi = expected.flatten(1).max(1).values.view(-1, 1, 1)
        torch.testing.assert_close(result.raw["amecam"], expected - lo)
        torch.testing.assert_close(result.maps["amecam"], (expected - lo) / (hi - lo), atol=1e-5, rtol=0)


def test_invert_semantics(trained):
    model, x, y = trained["model"], trained["xt"][:16], trained["yt"][:16]
    plain = amecam_maps(model, x, y, invert="false")
    inverted = amecam_maps(model, x, y, invert="true")
    torch.testing.assert_close(inverted, 1 - plain, atol=1e-5, rtol=0)
    auto = amecam_maps(model, x, y, invert="auto")
    # Independent oracle: delete each polarity's top 20 % pixels (set to the dataset mean), compare drops.
    fill = model.normalize.mean.view(1, 3, 1, 1)
    with torch.no_grad():
        score = model(x).gather(1, y[:, None]).squeeze(1)
        drops = []
        for m in (plain, 1 - plain):
            top = m.flatten(1).topk(int(np.ceil(0.2 * 32 * 32)), dim=1).indices
            mask = torch.zeros(16, 32 * 32, dtype=torch.bool).scatter_(1, top, True).view(16, 1, 32, 32)
            drops.append(score - model(torch.where(mask, fill, x)).gather(1, y[:, None]).squeeze(1))
    choose_inverted = drops[1] > drops[0]
    expected = torch.where(choose_inverted.view(-1, 1, 1), inverted, plain)
    torch.testing.assert_close(auto, expected, atol=1e-5, rtol=0)
    assert choose_inverted.float().mean() < 0.5  # deleting the object (plain polarity) hurts more


def test_checkpoint_round_trip_gives_identical_maps(trained, tmp_path):
    model, x, y = trained["model"], trained["xt"][:8], trained["yt"][:8]
    save_checkpoint(tmp_path / "me.pt", model, "multi_exit_cnn", PARAMS)
    loaded, payload = load_checkpoint(tmp_path / "me.pt")
    assert payload["architecture"] == "multi_exit_cnn" and bool(loaded.aggregator_trained)
    for invert in ("false", "auto"):
        assert torch.equal(amecam_maps(loaded.eval(), x, y, invert=invert), amecam_maps(model, x, y, invert=invert))


def test_3d_model_trains_and_explains():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 16, 16) * 0.2
    y = torch.arange(8) % 2
    x[y == 1, :, 2:6, 4:10, 4:10] += 0.8   # class 1: a bright planted cube
    model = build_model("multi_exit_cnn", n_classes=2, in_channels=1, widths=[4, 8, 8], dims=3,
                        aggregator_width=8)
    train_multi_exit(model, x, y, epochs=2, batch_size=4, lr=0.01, seed=0)
    history = train_aggregator(model, x, y, epochs=1, batch_size=4, lr=0.01, seed=0)
    assert np.isfinite(history[0]["loss"])
    for invert in ("true", "auto"):
        maps = amecam_maps(model, x, y, invert=invert)
        assert maps.shape == (8, 8, 16, 16)
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    with torch.no_grad():
        _, _, weights = model.ame_maps(x, y)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8, 8, 16, 16))


def test_errors(trained):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(CamError, match="multi_exit_cnn"):
        cambench.explain(GapNet().eval(), x, "amecam", "features.relu2")
    untrained = build_model("multi_exit_cnn", **PARAMS).eval()
    with pytest.raises(CamError, match="aggregator was never trained"):
        amecam_maps(untrained, x, None)
    model = trained["model"]
    with pytest.raises(CamError, match="parameter 'invert' of method 'amecam' must be one of 'true', 'false', 'auto'"):
        amecam_maps(model, x, None, invert="sometimes")
    with pytest.raises(CamError, match="auto_fraction"):
        amecam_maps(model, x, None, invert="auto", auto_fraction=1.5)
    with pytest.raises(CamError, match="include_exits"):
        amecam_maps(model, x, None, include_exits="yes")
    with pytest.raises(CamError, match="class targets"):
        amecam_maps(model, x, lambda logits: logits[:, 0])
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        build_model("multi_exit_cnn", n_classes=2, dims=4)
