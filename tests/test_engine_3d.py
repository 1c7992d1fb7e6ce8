"""3D post-processing: the final (N, D, H, W) maps against an independent trilinear interpolation.

The other 3D tests check shapes, ranges or raw feature-resolution maps, which a post-processing that
reversed or transposed an axis would pass. Here the final map of a small 3D CNN (as the pipeline
builds it: Normalize inside, in-place ReLUs) with a planted off-centre blob must equal captum's raw
LayerGradCam map put through ReLU, min-max, a trilinear up-sampling written out below and min-max,
and its peak must lie in the blob.
"""
import torch

import cambench
from cambench.models.zoo import small_cnn3d

SIZE = (8, 12, 10)                                # D, H, W: all different, so no axis can stand in for another
BLOB = (slice(1, 3), slice(2, 5), slice(6, 9))    # near the first slice, off-centre in H and W


def linear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) 1-D linear interpolation with half-pixel centres and edge clamping (align_corners=False)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    w = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - w
    m[torch.arange(n_out), hi] += w
    return m


def trilinear(maps: torch.Tensor, size) -> torch.Tensor:
    """(N, d, h, w) -> (N, *size), one axis at a time."""
    md, mh, mw = (linear_matrix(a, b) for a, b in zip(maps.shape[1:], size))
    return torch.einsum("Dd,Hh,Ww,ndhw->nDHW", md, mh, mw, maps.double())


def minmax(maps: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo.view(-1, 1, 1, 1)) / (hi - lo + eps).view(-1, 1, 1, 1)


def blob_model():
    """small_cnn3d with hand-set weights: each block averages its input (so activations are high on the
    bright blob, zero on the dark background after the ReLU); class 0 reads them positively."""
    torch.manual_seed(0)
    model = small_cnn3d(2, widths=[3, 3], pools=1).eval()
    with torch.no_grad():
        for block in (model.features.block1, model.features.block2):
            block.conv.weight.fill_(1.0 / block.conv.weight[0].numel())
            block.conv.weight[:, :, 1, 1, 1] += 0.2         # a little detail, so the map is not a plain blur
        model.fc.weight.copy_(torch.tensor([[1.0, 0.5, 2.0], [-1.0, -1.0, -1.0]]))
        model.fc.bias.zero_()
    return model


def test_final_3d_maps_equal_an_independent_trilinear_upsampling_and_peak_in_the_blob():
    from captum.attr import LayerGradCam
    model = blob_model()
    x = torch.zeros(2, 1, *SIZE)
    x[(slice(None), 0) + BLOB] = 1.0
    x[1, 0, 1, 3, 7] = 0.6                           # the two images differ inside the blob
    layer = model.features.block2
    targets = torch.zeros(2, dtype=torch.long)
    result = cambench.explain_many(model, x, ["gradcam", "cam"], "features.block2", targets=targets)
    raw = LayerGradCam(model, layer).attribute(x, target=targets).squeeze(1).detach()
    assert raw.shape[1:] == (4, 6, 5)                # one 2x max-pool: (D, H, W) / 2
    torch.testing.assert_close(result.raw["gradcam"], raw, rtol=1e-4, atol=1e-6)
    expected = minmax(trilinear(minmax(raw.clamp_min(0)), SIZE)).float()
    for method in ("gradcam", "cam"):               # GAP + linear: CAM's final map equals Grad-CAM's
        maps = result.maps[method]
        assert maps.shape == (2, *SIZE)
        torch.testing.assert_close(maps, expected, rtol=0, atol=1e-5)
        for i in range(2):
            peak = torch.unravel_index(maps[i].argmax(), SIZE)
            assert all(s.start <= int(p) < s.stop for p, s in zip(peak, BLOB)), (method, i, peak)
    # and engine.postprocess on its own, on the raw map
    torch.testing.assert_close(cambench.engine.postprocess(raw, SIZE)[0], expected, rtol=0, atol=1e-5)
