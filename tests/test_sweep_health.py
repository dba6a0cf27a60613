"""Training health: models leave the mean-image plateau, the evaluation sample is a random one,
and a model that learned nothing is named as such, down to the report's claims."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.recon_r2 import shapes_folder
from models import ModelConfig, build_model
from sweep.data import load_dataset
from sweep.train.evaluate import (Posteriors, active_units, dead_first_layer, evaluate, logvar_at_bound,
                                  mean_image_loglik)
from sweep.train.health import COLLAPSED, CRIPPLED, HEALTHY, PLATEAU, HealthConfig, classify, verdict


@pytest.fixture(scope="module")
def dsprites():
    data = load_dataset("dsprites_generated", size=6000, seed=0, held_out=0.1)
    mean, scale = data.pixel_statistics("train")
    return data, mean, scale, data.batch(data.evaluation_indices(512, seed=0))


def _model(kind, layers, data, mean, hidden=128):
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, layers=layers, beta=4.0, z_dim=6, hidden_dim=hidden,
                                    dataset_size=len(data.train_indices)))
    model.set_mean_image(mean)
    return model


@pytest.mark.parametrize("kind", ["tcdlgm", "seatbelt"])
def test_three_layer_models_leave_the_plateau_within_a_few_hundred_steps(dsprites, kind):
    """300 Adam steps (batch 64, lr 3e-3, width 128) take an L = 3 hierarchy well past the
    mean-image model on held-out images: the smoke bar is 25% of its magnitude."""
    data, mean, scale, images = dsprites
    model = _model(kind, 3, data, mean)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = model.objective(data.sample_batch(generator, 64)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    row, _ = evaluate(model, images, mean, scale, noise_sigmas=[1.0], noise_samples=16, batch_size=256, seed=0)
    health, reason = classify(row, model.attack_layers)
    assert health == HEALTHY, reason
    assert row["elbo"] > row["elbo_mean_image"] + 0.25 * abs(row["elbo_mean_image"]), reason
    assert row["active_units"][0] > 0 and row["logvar_at_bound"] == [0.0, 0.0, 0.0]


def _collapse(model):
    """A constant encoder (every posterior N(0, I)) and a decoder that draws the mean image."""
    with torch.no_grad():
        for layer in [model.inference.head, *(chain[-1] for chain in model.inference.chain)]:
            layer.weight.zero_()
            layer.bias.zero_()
        last = [m for m in model.generative.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
    return model


def _collapse_top(model):
    """A hierarchy whose top layer says nothing about x (q(z^L|z^{L-1}) = N(0, I)) over an
    encoder whose first layer varies with x."""
    with torch.no_grad():
        model.inference.head.weight.mul_(20.0)
        model.inference.chain[-1][-1].weight.zero_()
        model.inference.chain[-1][-1].bias.zero_()
    return model


def test_a_collapsed_model_is_named_collapsed_and_the_report_measures_nothing_on_it(dsprites, tmp_path):
    from analysis import aggregate as agg
    from analysis.report import build_report
    from analysis.synthetic import trial_id, write_synthetic_results
    from results import schema

    data, mean, scale, images = dsprites
    model = _collapse(_model("seatbelt", 3, data, mean))
    row, _ = evaluate(model, images, mean, scale, noise_sigmas=[1.0], noise_samples=16, batch_size=256, seed=0)
    # the decoder is the mean-image model itself (only the lower layers' KL to their learned
    # priors separates the ELBO from it), and the encoder says nothing about x
    assert row["recon_loglik"] == pytest.approx(row["elbo_mean_image"], abs=1e-3)
    assert row["elbo_mean_image"] - 10 < row["elbo"] <= row["elbo_mean_image"] + 1e-3
    assert row["active_units"] == [0, 0, 0]
    health, reason = classify(row, model.attack_layers)
    assert health == COLLAPSED and "no active unit" in reason

    # a sweep whose largest Seatbelt-VAE is that model: its train row carries the real evaluation
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 10.0, 1), ("seatbelt", 1.0, 3), ("seatbelt", 10.0, 3)]
    out = tmp_path / "out"
    write_synthetic_results(out, datasets=("d",), grid=grid, pairs=3, n_lam=6)
    collapsed = trial_id("d", "seatbelt", 10.0, 3, 10, 0)
    identity = dict(sweep="synthetic", trial_id=collapsed, dataset="d", model="seatbelt", beta=10.0, layers=3,
                    z_dim=10, seed=0, status="ok", reason="")
    import pyarrow.parquet as pq
    pq.write_table(schema.table([{**row, **identity, "health": health, "health_reason": reason}], schema.TRAIN),
                   out / "train" / f"{collapsed}.parquet")

    # and its β = 1 sibling's top layer carries nothing: collapsed too, named by its reason
    top_model = _collapse_top(_model("seatbelt", 3, data, mean))
    top_row, _ = evaluate(top_model, images, mean, scale, noise_sigmas=[1.0], noise_samples=16,
                          batch_size=256, seed=0)
    top_health, top_reason = verdict(top_row, top_model)
    assert top_health == COLLAPSED and top_reason.startswith("no active unit in z3, the layer β acts on")
    top_collapsed = trial_id("d", "seatbelt", 1.0, 3, 10, 0)
    pq.write_table(schema.table([{**top_row, **identity, "trial_id": top_collapsed, "beta": 1.0,
                                  "health": top_health, "health_reason": top_reason}], schema.TRAIN),
                   out / "train" / f"{top_collapsed}.parquet")

    report = build_report(out, log_to_mlflow=False)
    claims = pd.read_csv(report / "claims.csv").fillna("")
    naming = claims.loc[claims["verdict"].str.contains(top_collapsed, regex=False)
                        | claims["left_out"].str.contains(top_collapsed, regex=False), ["verdict", "left_out"]]
    assert len(naming), "no claim names the trial whose top layer collapsed"
    for texts in naming.itertuples():
        text = texts.verdict + texts.left_out
        assert f"{top_collapsed} (collapsed: no active unit in z3, the layer β acts on" in text, text
    seatbelt_claims = claims.loc[claims["numerator"].str.startswith("Seatbelt-VAE L=3 β=10")]
    assert len(seatbelt_claims) >= 8
    for text in seatbelt_claims["verdict"]:
        assert text.startswith("not measured: no healthy trial of Seatbelt-VAE L=3 β=10"), text
        assert collapsed in text and "collapsed" in text
    assert (seatbelt_claims["estimate"] == "").all()
    tcvae = claims.loc[(claims["claim"] == "latent Δ: β-TCVAE (largest β) over VAE") & (claims["variant"] == "all λ")].iloc[0]
    assert tcvae["estimate"] > 10 and "not measured" not in tcvae["verdict"]
    summary = pd.read_csv(report / "attack_summary.csv")
    assert not ((summary["model"] == "seatbelt") & (summary["beta"] == 10.0)).any()
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "Training health" in page and collapsed in page and "the layer β acts on" in page
    assert sorted(agg.left_out(pd.read_parquet(out / "train"))["trial_id"]) == sorted([collapsed, top_collapsed])


def _kill(units: torch.Tensor, bias: torch.Tensor, share: float) -> int:
    """Make the first ``share`` of a layer's units negative on any image: a bias of -1e4 under
    inputs of at most a few hundred. Returns how many were killed."""
    n = round(share * len(bias))
    with torch.no_grad():
        bias[:n] = -1e4
    return n


def test_a_model_whose_first_layer_is_killed_is_crippled_and_the_report_names_it(dsprites, tmp_path):
    from analysis.report import build_report
    from analysis.synthetic import trial_id, write_synthetic_results
    from results import schema

    data, mean, scale, images = dsprites
    model = _model("tcvae", 1, data, mean)
    first = model.inference.encoder[1]
    assert isinstance(first, torch.nn.Linear)
    assert dead_first_layer(model, images, 256) == 0.0        # alive at initialisation
    killed = _kill(first.weight, first.bias, 0.75)
    with torch.no_grad():   # an encoder whose code varies with x on the units left (not collapsed)
        model.inference.head.weight.mul_(20.0)
    row, _ = evaluate(model, images, mean, scale, noise_sigmas=[1.0], noise_samples=16, batch_size=256, seed=0)
    assert row["dead_first_layer"] == killed / first.out_features
    health, reason = verdict({**row, "elbo": -100.0}, model)   # however good its ELBO
    assert health == CRIPPLED and reason.startswith("75% of the encoder's first-layer units never activate")

    out = tmp_path / "out"
    write_synthetic_results(out, datasets=("d",), grid=[("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 10.0, 1)],
                            pairs=3, n_lam=6)
    crippled = trial_id("d", "tcvae", 10.0, 1, 10, 0)
    identity = dict(sweep="synthetic", trial_id=crippled, dataset="d", model="tcvae", beta=10.0, layers=1,
                    z_dim=10, seed=0, status="ok", reason="")
    import pyarrow.parquet as pq
    pq.write_table(schema.table([{**row, **identity, "health": health, "health_reason": reason}], schema.TRAIN),
                   out / "train" / f"{crippled}.parquet")
    report = build_report(out, log_to_mlflow=False)
    page = (report / "index.html").read_text(encoding="utf-8")
    assert f"{crippled} (crippled)" in page and "first-layer units never activate" in page


def test_dead_first_layer_counts_channels_of_a_conv_net_and_a_plugin_encoder(dsprites):
    """A channel is dead when the ReLU after the first convolution (past its batch norm) is zero
    at every position of every image; an encoder with a functional ReLU is read at its first
    layer's output."""
    from models import register_architecture
    from models.config import ARCHITECTURES
    from models.networks import Architecture

    data, mean, scale, images = dsprites
    torch.manual_seed(0)
    conv = build_model(ModelConfig(kind="vae", architecture="conv", z_dim=6, hidden_dim=32)).eval()
    conv.set_mean_image(mean)
    norm = conv.inference.encoder[1]
    assert isinstance(norm, torch.nn.BatchNorm2d) and dead_first_layer(conv, images, 256) == 0.0
    killed = _kill(norm.weight, norm.bias, 0.5)
    assert dead_first_layer(conv, images, 256) == killed / norm.num_features

    class FunctionalReLU(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(64 * 64, 40), torch.nn.Linear(40, 16)

        def forward(self, x):
            return torch.nn.functional.relu(self.second(torch.nn.functional.relu(self.first(x.flatten(1)))))

    def functional(cfg, decoder_in):
        return Architecture(FunctionalReLU(), 16, torch.nn.Sequential(
            torch.nn.Linear(decoder_in, 64 * 64), torch.nn.Unflatten(1, (1, 64, 64))))

    register_architecture("functional-relu-test", functional)
    try:
        plugin = build_model(ModelConfig(kind="vae", architecture="functional-relu-test", z_dim=6)).eval()
        first = plugin.inference.encoder.first
        killed = _kill(first.weight, first.bias, 0.25)
        assert dead_first_layer(plugin, images, 256) == killed / 40
    finally:
        ARCHITECTURES.pop("functional-relu-test")


def test_a_mean_image_decoder_over_an_active_encoder_is_a_plateau(dsprites):
    data, mean, scale, images = dsprites
    model = _model("tcvae", 1, data, mean)
    with torch.no_grad():   # the decoder ignores z; the untrained encoder still varies with x
        last = [m for m in model.generative.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
        model.inference.head.weight.mul_(20.0)
    row, _ = evaluate(model, images, mean, scale, noise_sigmas=[1.0], noise_samples=16, batch_size=256, seed=0)
    assert row["active_units"][0] > 0
    health, reason = classify(row, model.attack_layers)
    assert health == PLATEAU and "does not beat the mean-image model" in reason


def test_classify_thresholds():
    base = dict(elbo_mean_image=-500.0, active_units=[3, 2], logvar_at_bound=[0.0, 0.0])
    # the bar: -500 + 25% of 500 = -375
    assert classify({**base, "elbo": -374.0}, [0])[0] == HEALTHY
    assert classify({**base, "elbo": -376.0}, [0])[0] == PLATEAU
    assert classify({**base, "elbo": -376.0}, [0], HealthConfig(min_elbo_gain=0.2))[0] == HEALTHY
    assert classify({**base, "elbo": -100.0, "active_units": [0, 4]}, [0])[0] == COLLAPSED
    assert classify({**base, "elbo": -100.0, "active_units": [0, 4]}, [0, 1])[0] == HEALTHY
    frozen = classify({**base, "elbo": -100.0, "logvar_at_bound": [0.0, 0.3]}, [0, 1])
    assert frozen[0] == COLLAPSED and "z2 30%" in frozen[1]
    assert classify({**base, "elbo": -100.0, "logvar_at_bound": [0.0, 0.005]}, [0, 1])[0] == HEALTHY
    # reconstructions that explain less than min_recon_r2 of the pixel variance: a plateau
    bar = HealthConfig().min_recon_r2
    assert classify({**base, "elbo": -100.0, "recon_r2": bar}, [0])[0] == HEALTHY
    low = classify({**base, "elbo": -100.0, "recon_r2": bar - 0.01}, [0])
    assert low[0] == PLATEAU and "of the held-out pixel variance" in low[1]
    assert classify({**base, "elbo": -100.0, "recon_r2": float("nan")}, [0])[0] == HEALTHY  # an older row
    # more than max_dead_first_layer of the encoder's first layer dead: crippled (not in older rows)
    assert classify({**base, "elbo": -100.0, "dead_first_layer": 0.5}, [0])[0] == HEALTHY
    dead = classify({**base, "elbo": -100.0, "dead_first_layer": 0.51}, [0])
    assert dead[0] == CRIPPLED and dead[1].startswith("51% of the encoder's first-layer units never activate")
    assert classify({**base, "elbo": -100.0, "dead_first_layer": float("nan")}, [0])[0] == HEALTHY
    assert classify({**base, "elbo": -100.0, "dead_first_layer": 0.9}, [0],
                    HealthConfig(max_dead_first_layer=0.95))[0] == HEALTHY


def test_a_top_layer_without_active_unit_is_collapsed_where_beta_acts_on_it():
    """β weighs the TC of z^L; a z^L that carries nothing makes the trial say nothing about β,
    even where the decoder reads other layers (β-TCDLGM: z^1 only; Seatbelt: all of them)."""
    base = dict(elbo=-100.0, elbo_mean_image=-500.0, recon_r2=0.8, logvar_at_bound=[0.0] * 3)
    for decoded in ([0], [0, 1, 2]):
        health, reason = classify({**base, "active_units": [4, 2, 0]}, decoded, beta_layer=2)
        assert health == COLLAPSED and reason.startswith("no active unit in z3, the layer β acts on"), reason
        assert classify({**base, "active_units": [4, 2, 1]}, decoded, beta_layer=2)[0] == HEALTHY
        # a kind whose β weighs no layer (beta_layer None) keeps the decoder's rule
        assert classify({**base, "active_units": [4, 2, 0]}, decoded)[0] == HEALTHY


def test_a_gaussian_model_is_judged_on_the_variance_it_explains_not_a_relative_gain():
    """A Gaussian log-density moves with the pixel scale: a mean-image model at +4 nats makes a
    25% relative gain 1 nat, at -4 it makes it a loss. The ELBO must beat it, at all; the
    reconstructions must explain min_recon_r2 of the pixel variance."""
    base = dict(elbo_mean_image=4.0, active_units=[3], logvar_at_bound=[0.0], recon_r2=0.6)
    assert classify({**base, "elbo": 4.5}, [0], likelihood="gaussian")[0] == HEALTHY
    assert classify({**base, "elbo": 4.5}, [0])[0] == PLATEAU          # 25% of 4 is 1 nat
    worse = classify({**base, "elbo": 3.9}, [0], likelihood="gaussian")
    assert worse[0] == PLATEAU and "does not beat the mean-image model's 4.0 (needs > 4.0)" in worse[1]
    blur = classify({**base, "elbo": 900.0, "recon_r2": 0.02}, [0], likelihood="gaussian")
    assert blur[0] == PLATEAU and "explain 2% of the held-out pixel variance" in blur[1]


def test_evaluation_sample_is_random_fixed_and_nested(dsprites):
    data = dsprites[0]
    held = data.held_out_indices
    a, b = data.evaluation_indices(200, seed=0), data.evaluation_indices(200, seed=0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 200 and set(a.tolist()) <= set(held.tolist())
    assert torch.equal(data.evaluation_indices(50, seed=0), a[:50])        # nested
    assert not torch.equal(torch.sort(a).values, held[:200])                # not the first positions
    assert not torch.equal(data.evaluation_indices(200, seed=1), a)
    assert len(data.evaluation_indices(10**6, seed=0)) == len(held)
    # the held-out split is in grid order: its first positions are all one shape; a sample is not
    shapes = data.factors[a.numpy(), 0]
    assert len(np.unique(shapes)) == 3


def test_mean_image_loglik_against_a_direct_computation():
    rng = np.random.default_rng(0)
    x = (rng.random((5, 1, 4, 4)) < 0.3).astype(np.float32)
    p = rng.uniform(0.05, 0.95, size=(1, 4, 4)).astype(np.float32)
    want = [sum(np.log(p.flat[i]) if img.flat[i] else np.log(1 - p.flat[i]) for i in range(16)) for img in x]
    got = mean_image_loglik(torch.from_numpy(p), torch.from_numpy(x), "bernoulli", scale=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    g = mean_image_loglik(torch.from_numpy(p), torch.from_numpy(x), "gaussian", scale=0.5)
    want_g = [np.sum(-0.5 * np.log(2 * np.pi * 0.25) - (img - p) ** 2 / (2 * 0.25)) for img in x]
    np.testing.assert_allclose(g, want_g, rtol=1e-6)


def test_active_units_and_variances_at_the_bound_by_hand():
    means = [torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.05], [0.0, 0.0, -0.05]], dtype=torch.float64)]
    # variances over images (ddof 1): 0, 1, 0.0025 -> one unit above 0.01
    post = Posteriors(means, [torch.tensor([[0.0, -9.95, 3.0]] * 3, dtype=torch.float64)], [])
    assert active_units(post) == [1]
    assert logvar_at_bound(post) == [pytest.approx(1 / 3)]
    assert math.isclose(logvar_at_bound(post, margin=0.01)[0], 0.0)


def test_on_a_gaussian_folder_dataset_a_trained_model_is_healthy_and_an_untrained_one_is_not(tmp_path):
    """The sweep's own pieces (model config from the dataset, mean-image start, its training step,
    its evaluation and verdict) on a folder of grey shapes: 150 steps give a healthy β-TCDLGM,
    the same model untrained is on the plateau."""
    from sweep.config import TrainConfig
    from sweep.config.trials import TrialSpec
    from sweep.train.trainable import _evaluate, model_config_for, training_pixel_statistics

    data = load_dataset("folder", data_dir=shapes_folder(tmp_path / "shapes"), seed=0, held_out=0.25)
    assert data.likelihood == "gaussian"
    train = TrainConfig(steps=150, batch_size=32, lr=1e-2, architecture="mlp", hidden_dim=64,
                        eval_size=64, noise_sigmas=[], noise_samples=1)
    trial = TrialSpec("folder", "tcdlgm", 4.0, 2, 4, 0)

    def untrained():
        torch.manual_seed(0)
        model = build_model(model_config_for(trial, train, data))
        model.set_mean_image(training_pixel_statistics(data)[0])
        return model

    model = untrained()
    row, _ = _evaluate(model, data, train, trial, split_seed=0)
    assert verdict(row, model)[0] == COLLAPSED          # its encoder says nothing yet
    assert abs(row["recon_r2"]) < 0.02                   # and its decoder draws the mean image
    active = untrained()
    with torch.no_grad():                                # an encoder that varies with x: the plateau
        active.inference.head.weight.mul_(20.0)
        active.inference.chain[-1][-1].weight.mul_(20.0)
    row, _ = _evaluate(active, data, train, trial, split_seed=0)
    health, reason = verdict(row, active)
    assert health == PLATEAU and row["active_units"][0] > 0 and row["recon_r2"] < 0.02, reason

    optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
    generator = torch.Generator().manual_seed(0)
    # The training's noise seeded here, not left to what the evaluations above drew: with the
    # centred encoder input this recipe leaves more than 1% of z1's log-variances at their lower
    # bound (frozen) on 2 of 12 seeds (issue 31's note), so the outcome is pinned, not drawn.
    torch.manual_seed(0)
    model.train()
    for _ in range(train.steps):
        loss = model.objective(data.sample_batch(generator, train.batch_size, split="train")).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    row, _ = _evaluate(model, data, train, trial, split_seed=0)
    health, reason = verdict(row, model)
    assert health == HEALTHY, reason
    assert row["recon_r2"] > 2 * HealthConfig().min_recon_r2, reason
