"""Targets: image-dependent callables in chunked perturbation methods, Ablation-CAM's score <= 0 flag,
and the error under torch.inference_mode()."""
import logging

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import cambench
from cambench.engine import FLAG_NONPOSITIVE_SCORE, CamError
from cambench.models import small_cnn
from cambench.store import HeatmapWriter, join_heatmaps

N, CLASSES = 5, 6


@pytest.fixture(scope="module")
def setup():
    """A small CNN as the pipeline builds it (Normalize inside, in-place ReLUs), five images, and per-image
    classes c_i, d_i for the logit difference y_{c_i} - y_{d_i}."""
    torch.manual_seed(0)
    model = small_cnn(CLASSES, widths=[4, 6, 6, 6]).eval()
    x = torch.rand(N, 3, 12, 12)
    c = torch.tensor([0, 3, 1, 5, 2])
    d = torch.tensor([4, 1, 2, 0, 5])
    return model, x, c, d


def difference_model(model, c, d):
    """The model with N extra logits y_{c_i} - y_{d_i}: an index target C + i on it is the difference target."""
    head = nn.Linear(CLASSES, CLASSES + N, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:CLASSES] = torch.eye(CLASSES)
        head.weight[CLASSES + torch.arange(N), c] = 1.0
        head.weight[CLASSES + torch.arange(N), d] = -1.0
    return nn.Sequential(model, head).eval()


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
@pytest.mark.parametrize("chunk_size,batch_size", [(N, None), (3, None), (7, None), (N, 2)])
def test_image_dependent_two_argument_target_in_chunked_methods(setup, method, chunk_size, batch_size):
    """Chunks of exactly N rows (where a target that assumes row i = image i was silently wrong), of other
    sizes, and batches (image_index counts from the call's first image): raw maps equal the index target."""
    model, x, c, d = setup
    rows = lambda i: torch.arange(len(i))  # noqa: E731

    def difference(logits, image_index):
        return logits[rows(image_index), c[image_index]] - logits[rows(image_index), d[image_index]]

    ours = cambench.explain_many(model, x, {method: {"chunk_size": chunk_size}}, "features.block3",
                                 targets=difference, batch_size=batch_size)
    ref = cambench.explain_many(difference_model(model, c, d), x, {method: {"chunk_size": chunk_size}},
                                "0.features.block3", targets=CLASSES + torch.arange(N), batch_size=batch_size)
    torch.testing.assert_close(ours.scores, ref.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.raw[method], ref.raw[method], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.maps[method], ref.maps[method], rtol=0, atol=1e-5)
    assert (ours.targets == -1).all()


def test_one_argument_image_dependent_target_is_refused(setup):
    """A one-argument callable cannot know the image of a row: one that assumes row i = image i is refused at
    capture (before any method runs), with the message saying how to write it."""
    model, x, c, d = setup
    n = torch.arange(N)
    by_position = lambda logits: logits[n, c] - logits[n, d]  # noqa: E731
    for method in ("scorecam", "ablationcam", "gradcam"):
        with pytest.raises(CamError, match=r"one-argument callable target must score each row of logits on its "
                                           r"own.*fn\(logits, image_index\)"):
            cambench.explain(model, x, method, "features.block3", targets=by_position)
    # One whose output has N rows whatever it is given is refused with the same advice.
    first = lambda logits: logits[torch.arange(N), 0]  # noqa: E731
    with pytest.raises(CamError, match=r"must return a tensor of shape \(6,\) for logits of 6 rows, got "
                                       r"torch.Size\(\[5\]\).*fn\(logits, image_index\)"):
        cambench.explain(model, x, "ablationcam", "features.block3", targets=first)


def test_row_wise_one_argument_target_is_kept(setup):
    """A row-wise one-argument target (the same classes for every image) passes the check and equals its
    two-argument form in every chunking."""
    model, x, _, _ = setup
    spec = {"scorecam": {"chunk_size": 3}, "ablationcam": {"chunk_size": 7}, "gradcam": {}}
    one = cambench.explain_many(model, x, spec, "features.block3", targets=lambda logits: logits[:, 2] - logits[:, 4])
    two = cambench.explain_many(model, x, spec, "features.block3",
                                targets=lambda logits, i: logits[:, 2] - logits[:, 4])
    for m in spec:
        torch.testing.assert_close(one.raw[m], two.raw[m], rtol=0, atol=0)


def test_a_failing_two_argument_target_is_a_clear_error(setup):
    model, x, _, _ = setup
    with pytest.raises(CamError, match=r"callable target failed on logits of shape \(5, 6\).*IndexError.*"
                                       r"called as fn\(logits, image_index\)"):
        cambench.explain(model, x, "scorecam", "features.block3", targets=lambda logits, i: logits[:, 99])
    with pytest.raises(CamError, match=r"must return a tensor of shape \(5,\) for logits of 5 rows, got "
                                       r"torch.Size\(\[5, 6\]\)"):
        cambench.explain(model, x, "gradcam", "features.block3", targets=lambda logits, i: logits)


# ------------------------------------------------------------------------------------------------
# Ablation-CAM divides by the target score: images with score <= 0 are flagged and counted
# ------------------------------------------------------------------------------------------------

def test_ablationcam_flags_images_whose_target_score_is_not_positive(setup, tmp_path, caplog):
    model, x, _, _ = setup
    logits = model(x).detach()
    targets = logits.argmin(dim=1)
    targets[:2] = logits[:2].argmax(dim=1)
    scores = logits.gather(1, targets[:, None]).squeeze(1)
    nonpositive = scores <= 0
    assert nonpositive.any() and not nonpositive.all()
    result = cambench.explain_many(model, x, ["ablationcam", "gradcam"], "features.block3", targets=targets)
    assert torch.equal((result.flags["ablationcam"] & FLAG_NONPOSITIVE_SCORE) != 0, nonpositive)
    assert not (result.flags["gradcam"] & FLAG_NONPOSITIVE_SCORE).any()
    # The count lands in the heatmap file (and in a joined file over shards).
    ids = np.array([f"test/c/{i}" for i in range(N)], dtype=object)
    paths = []
    for k, (start, stop) in enumerate([(0, 2), (2, N)]):
        paths.append(tmp_path / f"shard-{k}.h5")
        part = cambench.explain_many(model, x[start:stop], ["ablationcam", "gradcam"], "features.block3",
                                     targets=targets[start:stop])
        with HeatmapWriter(paths[-1], ids[start:stop], np.zeros(stop - start), result.params,
                           attrs={"rows": f"[{start}, {stop}]", "provenance": "{}"}) as writer:
            writer.write(0, part)
    join_heatmaps(paths, tmp_path / "joined.h5")
    with h5py.File(tmp_path / "joined.h5") as f:
        assert f["raw/ablationcam"].attrs["n_nonpositive_score"] == int(nonpositive.sum())
        assert f["raw/gradcam"].attrs["n_nonpositive_score"] == 0
        np.testing.assert_array_equal(f["flags/ablationcam"][:], result.flags["ablationcam"].numpy())
    assert writer.flag_counts["ablationcam"]["n_nonpositive_score"] == int(nonpositive[2:].sum())


def test_compute_heatmaps_logs_the_count(tmp_path, caplog, monkeypatch):
    """The job log names the count for Ablation-CAM (the pipeline's heatmap job)."""
    import cambench.pipeline as pipeline
    from cambench.engine import FLAG_COUNTS
    from cambench.jobs import HeatmapJob

    class Writer:
        def __init__(self, *args, **kwargs):
            self.flag_counts = {"ablationcam": dict.fromkeys(FLAG_COUNTS.values(), 0),
                                "gradcam": dict.fromkeys(FLAG_COUNTS.values(), 0)}
            self.flag_counts["ablationcam"]["n_nonpositive_score"] = 3

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, start, result):
            pass

    class Data:
        ids, labels = np.array(["a"]), np.array([0])

        def __len__(self):
            return 0

    monkeypatch.setattr(pipeline, "HeatmapWriter", Writer)
    monkeypatch.setattr(pipeline, "read_shard", lambda *a: Data())
    monkeypatch.setattr(pipeline, "load_model", lambda *a: (small_cnn(3), {"architecture": "small_cnn"}))
    monkeypatch.setattr(pipeline, "provenance", lambda *a: {})
    with caplog.at_level(logging.INFO, logger="cambench"):
        pipeline.compute_heatmaps("d.h5", "m.pt", tmp_path / "h.h5", HeatmapJob(
            perturbation="none", level=0, methods={"ablationcam": {}, "gradcam": {}}, target_layer="features.block3",
            split="test", class_source="gt", batch_size=4, dtype="float16", seed=0, device="cpu"))
    lines = [r.getMessage() for r in caplog.records if "n_nonpositive_score" in r.getMessage()]
    assert lines == ["ablationcam none~0: n_constant 0, n_nonfinite 0, n_nonpositive_score 3 of 0 images"]


# ------------------------------------------------------------------------------------------------
# torch.inference_mode()
# ------------------------------------------------------------------------------------------------

def test_inference_mode_is_named_in_the_error(setup):
    model, x, _, _ = setup
    with torch.inference_mode():
        with pytest.raises(CamError, match=r"torch.inference_mode\(\).*torch.no_grad\(\)"):
            cambench.explain(model, x, "gradcam", "features.block3")
    # Methods without gradients run under it unchanged.
    with torch.inference_mode():
        inside = cambench.explain_many(model, x, ["eigencam", "ablationcam"], "features.block3")
    outside = cambench.explain_many(model, x, ["eigencam", "ablationcam"], "features.block3")
    for m in ("eigencam", "ablationcam"):
        torch.testing.assert_close(inside.maps[m], outside.maps[m], rtol=0, atol=0)
    # torch.no_grad() is fine: the engine records gradients from the target layer on itself.
    with torch.no_grad():
        torch.testing.assert_close(cambench.explain(model, x, "gradcam", "features.block3"),
                                   cambench.explain(model, x.clone(), "gradcam", "features.block3"))
