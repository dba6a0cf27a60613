"""Checkpoints round-trip exactly, and anything that is not one of ours raises CheckpointError
without running code."""

import os
import pickle

import pytest
import torch

from models import CheckpointError, ModelConfig, build_model, load_checkpoint, save_checkpoint




def _trained_model(arch="conv"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="seatbelt", layers=2, beta=4.0, z_dim=3, hidden_dim=16,
                                    architecture=arch, likelihood="gaussian", dataset_size=100))
    model.set_mean_image(torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(3)))  # the centred input's too
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 1, 64, 64)
    for _ in range(2):   # moves weights and batch-norm running statistics off their init
        opt.zero_grad()
        model.objective(x).loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_round_trip_gives_identical_outputs(tmp_path, arch):
    model = _trained_model(arch)
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(path, model, step=123, extra={"trial_id": "t0", "elbo": -1.5, "tags": [1, 2]})
    assert sorted(os.listdir(path.parent)) == ["model.pt"]       # no temp file left behind
    loaded, step, extra = load_checkpoint(path)
    assert step == 123 and extra == {"trial_id": "t0", "elbo": -1.5, "tags": [1, 2]}
    assert not loaded.training and loaded.cfg == model.cfg
    x = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        a, b = model.encode(x, sample=False), loaded.encode(x, sample=False)
        for qa, qb in zip(a.posteriors, b.posteriors):
            assert torch.equal(qa.mean, qb.mean) and torch.equal(qa.logvar, qb.logvar)
        assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    for (na, ta), (nb, tb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert na == nb and torch.equal(ta, tb)


def test_overwrite_is_atomic_replace(tmp_path):
    model = _trained_model("mlp")
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, step=1)
    save_checkpoint(path, model, step=2)
    assert load_checkpoint(path)[1] == 2 and sorted(os.listdir(tmp_path)) == ["m.pt"]


def test_extra_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", _trained_model("mlp"), step=1, extra={"x": object()})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "trunc.pt"
    save_checkpoint(path, _trained_model("mlp"), step=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(path)


def test_a_version_2_file_loads_as_the_model_it_was_trained_as(tmp_path):
    """Format version 2 predates ``encoder_input``: its encoders were trained on 2x - 1, so it
    loads with encoder_input "symmetric" and encodes exactly as it did."""
    torch.manual_seed(0)
    config = ModelConfig(kind="tcvae", beta=4.0, z_dim=3, hidden_dim=16, encoder_input="symmetric")
    model = build_model(config).eval()
    legacy = {k: v for k, v in config.to_dict().items() if k != "encoder_input"}
    path = tmp_path / "v2.pt"
    torch.save({"format": "seatbelt-vae-checkpoint", "version": 2, "config": legacy,
                "state_dict": model.state_dict(), "step": 7, "extra": {}}, path)
    loaded, step, _ = load_checkpoint(path)
    assert step == 7 and loaded.cfg.encoder_input == "symmetric"
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1)).round()
    with torch.no_grad():   # the encoder reads 2x - 1, computed here by hand
        features = model.inference.encoder(2.0 * x - 1.0)
        assert torch.equal(loaded.encode(x, sample=False).features, features)


def test_foreign_files(tmp_path):
    model = _trained_model("mlp")
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)                       # a bare state dict
    with pytest.raises(CheckpointError, match="not a seatbelt-vae-checkpoint"):
        load_checkpoint(bare)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "weights": torch.ones(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt"):
        load_checkpoint(other)
    bad_cfg = tmp_path / "badcfg.pt"
    torch.save({"format": "seatbelt-vae-checkpoint", "version": 1, "config": {"kind": "wae"},
                "state_dict": {}, "step": 0, "extra": {}}, bad_cfg)
    with pytest.raises(CheckpointError, match="badcfg.pt"):
        load_checkpoint(bad_cfg)


class _Evil:
    """Unpickling this would create the marker file (code execution)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_does_not_run(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"format": "seatbelt-vae-checkpoint", "version": 1, "evil": _Evil(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Evil(marker)))     # sanity: the payload really is armed
    assert marker.exists()
