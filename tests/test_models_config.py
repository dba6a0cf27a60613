"""Bad configs raise ConfigError naming the field; configs round-trip through plain dicts."""

import json

import pytest

from models import ConfigError, ModelConfig, UserError, build_model

BAD = [
    ("kind", dict(kind="wae")),
    ("architecture", dict(architecture="resnet")),
    ("channels", dict(channels=0)),
    ("image_size", dict(image_size=-3)),
    ("z_dim", dict(z_dim=2.5)),
    ("layers", dict(layers=0)),
    ("beta", dict(kind="tcvae", beta=-1.0)),
    ("beta", dict(kind="tcvae", beta=float("nan"))),
    ("likelihood", dict(likelihood="poisson")),
    ("gaussian_scale", dict(likelihood="gaussian", gaussian_scale=0.0)),
    ("gaussian_scale", dict(likelihood="bernoulli", gaussian_scale=0.1)),
    ("condition_on_x", dict(condition_on_x="yes")),
    ("free_bits", dict(free_bits=-0.5)),
    ("free_bits", dict(kind="seatbelt", layers=3, free_bits=[1.0, 1.0])),
    ("tc_estimator", dict(tc_estimator="hfvae")),
    ("dataset_size", dict(dataset_size=0)),
    ("hidden_dim", dict(hidden_dim=0)),
    ("chain_hidden_dim", dict(chain_hidden_dim=True)),
    ("layers", dict(kind="vae", layers=2)),
    ("beta", dict(kind="vae", beta=4.0)),
    ("layers", dict(kind="tcvae", layers=3)),
    ("layers", dict(kind="seatbelt", layers=1)),
    ("layers", dict(kind="tcdlgm", layers=1)),
]


@pytest.mark.parametrize("field,kw", BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD)])
def test_bad_config_names_the_field(field, kw):
    with pytest.raises(ConfigError, match=field) as info:
        ModelConfig(**kw).validate()
    assert isinstance(info.value, UserError)
    with pytest.raises(ConfigError, match=field):
        build_model(ModelConfig(**kw))


def test_conv_needs_64_pixels():
    with pytest.raises(ConfigError, match="image_size"):
        build_model(ModelConfig(architecture="conv", image_size=32, hidden_dim=8))


def test_valid_configs_and_round_trip():
    cfg = ModelConfig(kind="seatbelt", layers=3, beta=4.0, free_bits=[0.5, 0.0, 1.0], hidden_dim=8)
    assert cfg.validate() is cfg
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(d) == cfg
    assert cfg.free_bits_per_layer == [0.5, 0.0, 1.0]
    assert ModelConfig(kind="tcdlgm", layers=2, free_bits=2.0).free_bits_per_layer == [2.0, 2.0]
    assert build_model(d).cfg == cfg


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="zdim"):
        ModelConfig.from_dict({"zdim": 10})
