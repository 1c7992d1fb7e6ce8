"""The inference copy (cambench.inference): folded, channels-last, checked, cached, never the user's model."""
import torch
from torch import nn

from cambench.engine import capture
from cambench.inference import ChannelsLast, inference_copy
from cambench.methods.perturbation import scorecam


class _DataDependentModel(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.bn(self.conv(x)).relu()
        if h.mean() > 1e9:  # never true; only there to defeat tracing
            h = h * 0
        return self.fc(h.mean(dim=(2, 3)))


def _bn_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():  # non-trivial running statistics, so that folding them matters
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_inference_copy_folds_batch_norm_reproduces_logits_and_is_cached(images):
    model = _bn_model()
    with torch.no_grad():
        logits = model(images)
    fast, channels_last = inference_copy(model, images, logits)
    assert fast is not model and channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), "Conv/BN not folded"
    with torch.no_grad():
        torch.testing.assert_close(fast(images.contiguous(memory_format=torch.channels_last)), logits,
                                   rtol=1e-5, atol=1e-5)
    assert inference_copy(model, images, logits)[0] is fast, "the copy is built once per model state"
    assert all(p.is_contiguous() for p in model.parameters()), "the user's model is left as it was"
    with torch.no_grad():  # a changed parameter (a training step, load_state_dict) rebuilds the copy
        model[0].weight.add_(0.1)
        logits = model(images)
    rebuilt, _ = inference_copy(model, images, logits)
    assert rebuilt is not fast
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), logits, rtol=1e-5, atol=1e-5)


def test_scorecam_falls_back_to_the_model_itself_when_it_cannot_be_traced(images):
    torch.manual_seed(0)
    model = _DataDependentModel().eval()
    with torch.no_grad():
        logits = model(images)
    fast, _ = inference_copy(model, images, logits)
    assert isinstance(fast, ChannelsLast) and isinstance(fast.model, _DataDependentModel)  # eager, not fx
    inputs = capture(model, images, model.bn, need_gradients=False)
    weights = scorecam(inputs)
    scores = []
    for k in range(inputs.activations.shape[1]):
        a = inputs.activations[:, k:k + 1]
        lo, hi = a.amin(dim=(2, 3), keepdim=True), a.amax(dim=(2, 3), keepdim=True)
        with torch.no_grad():
            scores.append(model(images * (a - lo) / (hi - lo + 1e-8)).gather(1, inputs.targets[:, None]).squeeze(1))
    torch.testing.assert_close(weights, torch.stack(scores, dim=1).softmax(dim=1), rtol=1e-5, atol=1e-7)


def test_an_inference_copy_that_disagrees_is_not_used(images):
    model = _bn_model()
    with torch.no_grad():
        wrong = model(images) + 1.0  # logits the copy cannot reproduce
    fast, channels_last = inference_copy(model, images, wrong)
    assert fast is model and not channels_last


def test_metrics_through_the_inference_copy_equal_the_eager_model(images, monkeypatch):
    """Deletion AUC, brute force with the user's (eager, unfolded) model, step by step."""
    import sys

    from cambench.metrics import evaluate
    metrics_module = sys.modules["cambench.metrics.base"]  # where evaluate looks up inference_copy
    model = _bn_model()
    torch.manual_seed(3)
    maps = torch.rand(images.shape[0], *images.shape[2:])
    fill = torch.tensor([0.5, 0.4, 0.3])
    steps = 8
    seen = []  # rows of every forward of the user's model itself
    handle = model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    got = evaluate(model, images, maps, "deletion_auc", steps=steps, fill=fill)
    through_copy = sum(seen)
    # The same metric with the copy refused: the user's model then runs every deletion step.
    seen.clear()
    monkeypatch.setattr(metrics_module, "inference_copy", lambda net, x, logits=None: (net, False))
    eager = evaluate(model, images, maps, "deletion_auc", steps=steps, fill=fill)
    handle.remove()
    n = images.shape[0]
    assert through_copy <= 2 * n < (steps + 1) * n <= sum(seen), (through_copy, sum(seen))
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        targets = model(images).argmax(1)
        order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
        p = order.shape[1]
        curve = []
        for t in range(steps + 1):
            gone = torch.zeros_like(maps.flatten(1), dtype=torch.bool)
            gone.scatter_(1, order[:, :min(t * -(-p // steps), p)], True)
            x = torch.where(gone.view(maps.shape)[:, None], fill.view(1, 3, 1, 1), images)
            curve.append(model(x).softmax(1).gather(1, targets[:, None]).squeeze(1))
        curve = torch.stack(curve, dim=1)
    expected = (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / steps
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
