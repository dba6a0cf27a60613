"""The one model class: a hierarchical VAE with L stochastic layers, beta-TC on the top layer.

Every kind is this class; its ``KindSpec`` (``models.kinds``) says what differs:

  kind      L     beta   decoder sees          regulariser   (inference is the same chain for all)
  vae       1     1      z^1                   (beta-1) TC = 0
  tcvae     1     any    z^1                   (beta-1) TC
  tcdlgm    >= 2  any    z^1 only              (beta-1) TC of z^L  (eq. 5: p(x|z^1) prod p(z^i|z^{i+1}) p(z^L))
  seatbelt  >= 2  any    z^1..z^L concatenated (beta-1) TC of z^L  (eq. 7: the skip connections)

A kind registered by a plugin adds a row: its L and beta rules, the layers its decoder reads
(``decoded_layers``) and its ``regulariser``, e.g. a beta-VAE's (beta-1) KL of z.

Inference (eq. 6): q(z^1|x) prod_i q(z^{i+1} | z^i), or with condition_on_x the 2021 form
q(z^{i+1} | z^i, h(x)), h(x) being the image encoder's features. Generative chain:
p(z^i|z^{i+1}) Gaussians from small MLPs, p(z^L) = N(0, I). Training objective: eq. 8, see
``objective``.

Scale. A lower layer's KL, KL(q(z^i|.) || p(z^i|z^{i+1})), does not change when posterior and
prior widen together, so with a free prior variance nothing fixes the scale of z^1..z^{L-1}: on
the dimensions the decoder does not use, both variances ratcheted up to the log-variance bound
and the decoder's tanh layer saturated on the resulting inputs (std ~150), leaving it at the
mean image. The conditional priors are therefore parameterised relative to N(0, I): their
standard deviation is at most 1 (``_conditional_prior``), so a posterior wider than the unit
scale always costs KL, and every layer lives on the top layer's scale.

Parameters live in two groups so Table 1's weight norms have an unambiguous meaning:
  self.inference  = image encoder trunk + its head (q(z^1|x)) + the inference chain MLPs
  self.generative = image decoder + likelihood (learned scale, if any) + the prior chain MLPs
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models import kinds
from models.config import ModelConfig
from models.distributions import Gaussian
from models.likelihoods import build_likelihood
from models.networks import build_architecture, chain_mlp
from models.tc import TopKL, decompose_top_kl


@dataclass
class Encoding:
    posteriors: list[Gaussian]   # q(z^i | parent), layer 1 first, each [B, z_dim]
    z: list[Tensor]              # the values passed up the chain / to the decoder, [B, z_dim]
    features: Tensor             # h(x): image encoder features, [B, F]


@dataclass
class Objective:
    loss: Tensor                 # scalar to minimise (beta and free bits applied)
    parts: dict[str, Tensor]     # named detached scalars, batch means in nats


@dataclass
class KLTerms:
    """What a kind's regulariser reads (``KindSpec.regulariser(terms, beta)``), per sample, [B]."""
    kls: list[Tensor]            # KL of each layer, layer 1 first (the top layer's in closed form)
    top: TopKL                   # the top layer's KL split into index-code MI, TC and dim-KL

    @property
    def tc(self) -> Tensor:
        return self.top.tc


LOGVAR_BOUND = 10.0


def _full_precision(t: Tensor) -> Tensor:
    """A half-precision network output (bf16 / fp16 autocast) as float32; float32 and float64
    pass through unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def _posterior(params: Tensor) -> Gaussian:
    # A smooth bound on log-variances (std between e^-5 and e^5): an unbounded exp() of a
    # network output overflows to inf/NaN within a few hundred steps at lr 3e-3 in deep chains.
    # Under bf16 autocast the networks emit bf16; densities, KLs and the TC estimator's
    # log-sum-exps are computed in float32 (a bf16 log density of -500 is off by 2 nats).
    mean, logvar = _full_precision(params).chunk(2, dim=-1)
    return Gaussian(mean, LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND))


def _conditional_prior(params: Tensor) -> Gaussian:
    # p(z^i | z^{i+1}) relative to N(0, I): log-variance -softplus(-raw) lies in (-inf, 0), so the
    # std is at most 1 and the layer's scale cannot drift (module docstring). Below, the same
    # smooth bound as the posteriors keeps the density finite.
    mean, raw = _full_precision(params).chunk(2, dim=-1)
    logvar = -F.softplus(-raw)
    return Gaussian(mean, LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND))


class HierarchicalVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = ModelConfig.from_dict(cfg.to_dict()).validate()   # a private copy
        self.kind = kinds.get(cfg.kind)
        L, zd, width = cfg.layers, cfg.z_dim, cfg.chain_width
        # The decoder reads the kind's layers concatenated: for Seatbelt's skip connections,
        # all of them, which for the decoder's first (linear) layer is the same as a linear
        # projection of the concatenation.
        self._decoded = tuple(self.kind.decoded_layers(L))
        self._penalises_top_tc = self.kind.regulariser is kinds.tc_penalty
        decoder_in = zd * len(self._decoded)
        arch = build_architecture(cfg, decoder_in)
        chain_in = zd + (arch.feature_dim if cfg.condition_on_x else 0)
        self.inference = nn.ModuleDict(dict(
            encoder=arch.encoder,
            head=nn.Linear(arch.feature_dim, 2 * zd),                     # q(z^1 | x)
            chain=nn.ModuleList(chain_mlp(chain_in, width, zd) for _ in range(L - 1)),
        ))
        self.generative = nn.ModuleDict(dict(
            decoder=arch.decoder,
            likelihood=build_likelihood(cfg),
            prior_chain=nn.ModuleList(chain_mlp(zd, width, zd) for _ in range(L - 1)),  # [i]: p(z^{i+1}|z^{i+2}), 0-based
        ))
        if cfg.encoder_input == "centred":   # the training data's mean image, set by set_mean_image
            self.register_buffer("input_mean", torch.zeros(cfg.channels, cfg.image_size, cfg.image_size))

    # ------------------------------------------------------------------ structure
    @property
    def decoded_layers(self) -> list[int]:
        """0-based layers the decoder reads, in the order it concatenates them."""
        return list(self._decoded)

    @property
    def beta_layer(self) -> int | None:
        """0-based layer whose total correlation beta weighs (the top layer, for the kinds whose
        regulariser is the TC penalty), or None for a kind that penalises something else."""
        return self.cfg.layers - 1 if self._penalises_top_tc else None

    @property
    def attack_layers(self) -> list[int]:
        """0-based layers a latent attack must match: for the built-in kinds, those the
        likelihood depends on."""
        return self.kind.attack_layers(self.cfg.layers)

    def encoder_l2(self) -> float:
        """L2 norm of every parameter of the inference side (encoder trunk, head, chain)."""
        return _l2(self.inference)

    def decoder_l2(self) -> float:
        """L2 norm of every parameter of the generative side (decoder, likelihood, prior chain)."""
        return _l2(self.generative)

    # ------------------------------------------------------------------ inference
    def encode(self, x: Tensor, sample: bool = True, eps: list[Tensor] | None = None,
               input_noise_std: float = 0.0) -> Encoding:
        """Posterior of every layer. eps (one [B, z_dim] per layer) fixes the noise and wins
        over ``sample``; sample=False passes each layer's mean up the chain."""
        self._check_input(x)
        if eps is not None and len(eps) != self.cfg.layers:
            raise ValueError(f"eps has {len(eps)} tensors, the model has {self.cfg.layers} layers")
        h = self.inference.encoder(self.encoder_input(x, input_noise_std))
        posteriors, zs = [], []
        for i in range(self.cfg.layers):
            if i == 0:
                q = _posterior(self.inference.head(h))
            else:
                parent = torch.cat([zs[-1], h], dim=1) if self.cfg.condition_on_x else zs[-1]
                q = _posterior(self.inference.chain[i - 1](parent))
            if eps is not None:
                z = q.sample(eps[i])
            else:
                z = q.sample() if sample else q.mean
            posteriors.append(q)
            zs.append(z)
        return Encoding(posteriors, zs, h)

    def encoder_input(self, x: Tensor, noise_std: float = 0.0) -> Tensor:
        """What the image encoder reads (``ModelConfig.encoder_input``), with N(0, noise_std^2)
        noise in the paper's [-1, 1] units (its noise test): for a pixel-scaled input that is
        noise_std / 2, since 2(x + e/2) - 1 = (2x - 1) + e.

        Why not the paper's 2x - 1: on dSprites ~3,950 of 4,096 pixels are background in every
        image, so 2x - 1 puts the same -1 on them all, a large input shared by every image.
        Adam moves all of its weights the same way each step, and within ten steps 84-94% of the
        MLP's first-layer ReLUs were negative for every image, never to train again (issue 31).
        Centring removes whatever constant the data shares, whatever the background's value."""
        kind = self.cfg.encoder_input
        if kind == "symmetric":
            x_in, noise_scale = 2.0 * x - 1.0, 1.0
        else:
            x_in, noise_scale = (x - self.input_mean if kind == "centred" else x), 0.5
        if noise_std:
            x_in = x_in + (noise_scale * noise_std) * torch.randn_like(x_in)
        return x_in

    # ------------------------------------------------------------------ generation
    def prior(self, i: int, z_above: Tensor) -> Gaussian:
        """p(z^{i+1} | z^{i+2}) for 0-based layer i < L-1 (the top layer's prior is N(0, I))."""
        return _conditional_prior(self.generative.prior_chain[i](z_above))

    def decode(self, z: list[Tensor]) -> Tensor:
        """Likelihood parameters [B, C, H, W]: logits (bernoulli) or means in (0, 1) (gaussian)."""
        layers = self._decoded
        if len(z) <= max(layers):
            raise ValueError(f"{self.cfg.kind} decodes layers {[i + 1 for i in layers]} of "
                             f"{self.cfg.layers}, got {len(z)}")
        inp = z[layers[0]] if len(layers) == 1 else torch.cat([z[i] for i in layers], dim=1)
        # float32 likelihood: its per-image sum over 4,096 pixels must not round in bf16
        return self.generative.likelihood.params(_full_precision(self.generative.decoder(inp)))

    def log_likelihood(self, x: Tensor, z: list[Tensor]) -> Tensor:
        """log p(x | z), [B]."""
        return self.generative.likelihood.log_prob(self.decode(z), x)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the deterministic encoding, pixel range, [B, C, H, W]."""
        return self.generative.likelihood.mean(self.decode(self.encode(x, sample=False).z))

    @torch.no_grad()
    def generate(self, n: int) -> Tensor:
        """n images (decoder means) from ancestral sampling of the generative chain."""
        p = next(self.parameters())
        z = [torch.randn(n, self.cfg.z_dim, device=p.device, dtype=p.dtype)]
        for i in reversed(range(self.cfg.layers - 1)):
            z.insert(0, self.prior(i, z[0]).sample())
        return self.generative.likelihood.mean(self.decode(z))

    # ------------------------------------------------------------------ objectives
    def lower_kls(self, enc: Encoding) -> list[Tensor]:
        """One-sample MC log q(z^i|.) - log p(z^i|z^{i+1}) for layers 1..L-1, each [B].

        Analytic KL(q(z^i|.) || p(z^i|z^{i+1})) would be wrong here: z^{i+1} is drawn from
        q(z^{i+1}|z^i, .), so it depends on z^i, and only the joint MC term is the ELBO's."""
        return [enc.posteriors[i].log_prob(enc.z[i]) - self.prior(i, enc.z[i + 1]).log_prob(enc.z[i])
                for i in range(self.cfg.layers - 1)]

    def kl_to_prior(self, enc: Encoding, analytic_top: bool = False) -> Tensor:
        """KL(q(z|x) || p(z)) with the hierarchical prior, one-sample MC at enc.z, [B].
        analytic_top=True uses the closed form for the top layer (exact for L = 1)."""
        top_q, top_z = enc.posteriors[-1], enc.z[-1]
        top = top_q.kl_to_standard() if analytic_top else \
            top_q.log_prob(top_z) - Gaussian.standard_like(top_z).log_prob(top_z)
        return top + sum(self.lower_kls(enc), torch.zeros_like(top))

    def elbo(self, x: Tensor, eps: list[Tensor] | None = None) -> Tensor:
        """Per-sample ELBO (beta = 1, no free bits), [B]: one-sample MC for the likelihood and
        the lower layers' KLs, the closed form for the top layer's KL to N(0, I)."""
        enc = self.encode(x, eps=eps)
        return self.log_likelihood(x, enc.z) - self.kl_to_prior(enc, analytic_top=True)

    def objective(self, x: Tensor, eps: list[Tensor] | None = None) -> Objective:
        """Eq. 8 as a loss: -recon + sum_i FB_i(KL_i) + the kind's regulariser, batch means;
        for the built-in kinds the regulariser is (beta - 1) TC.

        Eq. 8's top-layer terms MI + beta TC + dimKL are written KL_L + (beta - 1) TC: the same
        objective (MI + TC + dimKL is the top layer's KL), but with the KL apart from the TC
        estimate. Free bits (Kingma et al. 2016) put a floor of free_bits_i nats under each
        layer's mean KL, gated on an unbiased KL: the closed form for the top layer, the
        one-sample MC log q - log p for the lower ones (a floor on MWS's MI + dimKL = KL_L - TC,
        biased down by about (D-1) log N nats, was always active). Below its floor a lower
        layer's term is constant. The top layer's is ``nats + TC - TC.detach()`` where beta
        weighs its TC (``_top_free_bits``): the same value, with gradient grad TC. The floor frees
        the bits z^L carries, not its total correlation, so TC keeps its weight beta below the
        floor (gradient beta grad TC; above it grad KL_L + (beta - 1) grad TC, eq. 8), where a
        constant floor left beta - 1, none at beta = 1. With beta = 1 and no free bits the loss
        is -ELBO.
        """
        cfg = self.cfg
        enc = self.encode(x, eps=eps)
        recon = self.log_likelihood(x, enc.z)
        top = decompose_top_kl(enc.z[-1], enc.posteriors[-1], cfg.dataset_size, cfg.tc_estimator)
        kls = self.lower_kls(enc) + [enc.posteriors[-1].kl_to_standard()]

        penalty = self.kind.regulariser(KLTerms(kls, top), cfg.beta)
        floors = cfg.free_bits_per_layer
        for kl, nats in zip(kls[:-1], floors[:-1]):
            penalty = penalty + _free_bits(kl.mean(), nats)
        kept = top.tc.mean() if self._penalises_top_tc else None
        loss = penalty + _top_free_bits(kls[-1].mean(), floors[-1], kept) - recon.mean()

        parts = {"recon_loglik": recon.mean()}
        for i, kl in enumerate(kls):
            parts[f"kl_{i + 1}"] = kl.mean()   # the top layer's entry is its whole KL
        parts.update(index_code_mi=top.index_code_mi.mean(), tc=top.tc.mean(),
                     dim_kl=top.dim_kl.mean(), elbo=(recon - sum(kls)).mean())
        return Objective(loss, {k: v.detach() for k, v in parts.items()})

    @torch.no_grad()
    def set_mean_image(self, mean_image: Tensor) -> None:
        """Start the decoder at the data's mean image (see models.likelihoods) and, with the
        centred encoder input, centre the encoder's input on it: call once, before training,
        with the training split's mean image [C, H, W] in [0, 1]."""
        self.generative.likelihood.set_mean_image(mean_image)
        if self.cfg.encoder_input == "centred":
            self.input_mean.copy_(mean_image.to(self.input_mean))

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: Tensor) -> None:
        c, s = self.cfg.channels, self.cfg.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images [B, {c}, {s}, {s}] in [0, 1], got {tuple(x.shape)}")


def _free_bits(kl_mean: Tensor, nats: float) -> Tensor:
    # Below the floor the term is constant, so its gradient stops pushing the layer to collapse.
    return torch.clamp(kl_mean, min=nats) if nats > 0 else kl_mean


def _top_free_bits(kl_mean: Tensor, nats: float, tc_mean: Tensor | None) -> Tensor:
    """The top layer's floored KL: ``_free_bits``, except that below the floor the TC piece of
    the KL keeps its gradient (value ``nats``, gradient grad TC), see ``objective``."""
    if nats <= 0 or tc_mean is None:
        return _free_bits(kl_mean, nats)
    below = nats + (tc_mean - tc_mean.detach())
    return torch.where(kl_mean >= nats, kl_mean, below)


def _l2(module: nn.Module) -> float:
    with torch.no_grad():
        return float(torch.sqrt(sum((p.double() ** 2).sum() for p in module.parameters())))


def encoder_l2(model: HierarchicalVAE) -> float:
    return model.encoder_l2()


def decoder_l2(model: HierarchicalVAE) -> float:
    return model.decoder_l2()


def build_model(cfg: ModelConfig | dict) -> HierarchicalVAE:
    """Validate the config (ConfigError on a bad field) and build the model."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return HierarchicalVAE(cfg)
