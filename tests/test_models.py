import os

import pytest
import torch

import cambench
from cambench.models import build_model, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    params = {"n_classes": 3, "in_channels": 3, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2]}
    model = build_model("small_cnn", **params).eval()
    save_checkpoint(tmp_path / "m.pt", model, "small_cnn", params)
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), loaded.eval()(x))
    assert payload["architecture"] == "small_cnn"
    maps = cambench.explain(loaded, x, "gradcam", "features.block4")
    assert maps.shape == (2, 32, 32)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['CAMBENCH_PWNED']}",))


def test_a_malicious_checkpoint_does_not_execute(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CAMBENCH_PWNED", str(marker))
    torch.save({"format": "cambench-checkpoint-1", "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: cannot load checkpoint with weights_only=True"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_checkpoint_whose_keys_do_not_match(tmp_path):
    params = {"n_classes": 3}
    model = build_model("small_cnn", **params)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    torch.save({"format": "cambench-checkpoint-1", "architecture": "small_cnn", "params": params,
                "state_dict": state}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="m.pt: weights do not match architecture 'small_cnn': missing"):
        load_checkpoint(tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="junk.pt: cannot load checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
