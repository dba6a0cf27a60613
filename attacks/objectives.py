"""Adversarial objectives Δ for a batch of independent (source x, target x^t, λ) problems.

Every objective is a *deterministic* function of the distortion d (the solver is L-BFGS-B,
which needs that): the latent attack encodes with ``sample=False`` (each layer's mean feeds the
next), and anything that samples (``l2_sample``, the output attack) uses noise fixed per problem
when the objective is built (common random numbers across evaluations).

Shapes: x, x^t and d are ``[P, C, H, W]`` in the pixel range [0, 1]; λ is ``[P]``. An objective
is called with a distortion for a subset ``idx`` of its problems (``None``: all of them) and
returns one value per problem, so a batched solver and a one-problem-at-a-time solver use the
same code, and the gradient of ``values.sum()`` w.r.t. d is every problem's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from results.vocabulary import (DEFAULT_SIMILARITY, ELBO, KL, L2_MEAN, L2_SAMPLE, LATENT, MODES, OUTPUT,
                                OUTPUT_SIMILARITIES, W2, register_similarity_unit, unit_of)

__all__ = [
    "gaussian_kl",
    "l2_mean",
    "l2_sample",
    "w2",
    "LatentSimilarity",
    "LATENT_SIMILARITIES",
    "register_similarity",
    "LatentObjective",
    "OutputObjective",
    "ObjectiveValue",
    "build_objective",
    "sample_encoder_noise",
    "posterior_params",
]

Index = Union[None, Sequence[int], Tensor, slice]


# --- similarities r(q1, q2) between diagonal Gaussians, one value per row ------------------

def gaussian_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) summed over the last dim, ``[B]``."""
    return 0.5 * (
        logvar2 - logvar1 + (logvar1.exp() + (mean1 - mean2) ** 2) / logvar2.exp() - 1.0
    ).sum(dim=-1)


def l2_mean(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """‖mean1 − mean2‖₂, ``[B]`` (Kos et al. 2018)."""
    return torch.linalg.vector_norm(mean1 - mean2, dim=-1)


def w2(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """2-Wasserstein distance between diagonal Gaussians: sqrt(‖μ1−μ2‖² + ‖σ1−σ2‖²), ``[B]``."""
    diff = torch.cat([mean1 - mean2, (0.5 * logvar1).exp() - (0.5 * logvar2).exp()], dim=-1)
    return torch.linalg.vector_norm(diff, dim=-1)


def l2_sample(mean1: Tensor, logvar1: Tensor, eps1: Tensor, z2: Tensor) -> Tensor:
    """‖z1 − z2‖₂ with z1 = mean1 + σ1·eps1 (fixed eps1) and a fixed target sample z2, ``[B]``."""
    return torch.linalg.vector_norm(mean1 + (0.5 * logvar1).exp() * eps1 - z2, dim=-1)


@dataclass(frozen=True)
class LatentSimilarity:
    """A similarity r of the latent attack (``attack.similarities``), per attacked layer, ``[B]``.

    ``sampled=False``: ``fn(mean1, logvar1, mean2, logvar2)`` compares the two posteriors;
    ``sampled=True``: ``fn(mean1, logvar1, eps1, z2)`` compares a sample of q(z|x+d), drawn with
    noise ``eps1`` fixed per problem, to a fixed sample ``z2`` of the target's posterior.

    ``unit``: the unit of its Δ, as the figures label the axis ("nats", "latent L2 distance");
    empty, the figures say "<name> units"."""

    name: str
    fn: Callable[..., Tensor]
    sampled: bool = False
    unit: str = ""


LATENT_SIMILARITIES: dict[str, LatentSimilarity] = {}


def register_similarity(similarity: LatentSimilarity) -> LatentSimilarity:
    """Make ``similarity.name`` a value ``attack.similarities`` takes, and record its unit in
    ``results.vocabulary`` (where the torch-free analysis reads it)."""
    register_similarity_unit(similarity.name, similarity.unit or f"{similarity.name} units")
    LATENT_SIMILARITIES[similarity.name] = similarity
    return similarity


# the built-in ones: their units are the vocabulary's, which analysis reads without this module
register_similarity(LatentSimilarity(KL, gaussian_kl, unit=unit_of(KL)))
register_similarity(LatentSimilarity(L2_MEAN, l2_mean, unit=unit_of(L2_MEAN)))
register_similarity(LatentSimilarity(L2_SAMPLE, l2_sample, sampled=True, unit=unit_of(L2_SAMPLE)))
register_similarity(LatentSimilarity(W2, w2, unit=unit_of(W2)))


def posterior_params(g) -> tuple[Tensor, Tensor]:
    """(mean, logvar) of one ``models.Gaussian``."""
    return g.mean, g.logvar


def sample_encoder_noise(model, x: Tensor, generators: Sequence[torch.Generator],
                         n_samples: int = 1) -> list[Tensor]:
    """Standard-normal noise shaped like the model's latents: one tensor per layer,
    ``[n_samples, P, z_dim_l]``; row p is drawn from ``generators[p]`` (so a problem's noise
    does not depend on which other problems share the batch)."""
    with torch.no_grad():
        enc = model.encode(x[:1], sample=False)
    dims = [int(g.mean.shape[-1]) for g in enc.posteriors]
    per_problem = []
    for gen in generators:
        per_problem.append([torch.randn(n_samples, d, generator=gen) for d in dims])
    return [
        torch.stack([pp[l] for pp in per_problem], dim=1).to(device=x.device, dtype=x.dtype)
        for l in range(len(dims))
    ]


# --- objectives ----------------------------------------------------------------------------

@dataclass
class ObjectiveValue:
    total: Tensor                # Δ = distance + λ‖d‖, [k]
    distance: Tensor             # Δ without λ‖d‖, [k]
    se: Optional[Tensor] = None  # Monte-Carlo standard error of Δ, [k] (evaluate_with_error)


class _Objective:
    """Shared part: the box, λ‖d‖ and the subset indexing."""

    mode: str
    similarity: str

    def __init__(self, model, x: Tensor, lams: Tensor):
        self.model = model
        self.x = x.detach()
        self.lams = torch.as_tensor(lams, dtype=x.dtype, device=x.device).reshape(-1)
        if self.lams.shape[0] != x.shape[0]:
            raise ValueError(f"need one λ per problem: {self.lams.shape[0]} λ for {x.shape[0]} problems")

    @property
    def n_problems(self) -> int:
        return self.x.shape[0]

    @staticmethod
    def _take(t: Tensor, idx: Index) -> Tensor:
        if idx is None:
            return t
        if isinstance(idx, slice):
            return t[idx]
        return t[torch.as_tensor(idx, dtype=torch.long, device=t.device)]

    def distance_draws(self, x_adv: Tensor, idx: Index) -> Tensor:
        """The distance on each of the objective's fixed noise draws, ``[S, k]`` (S = 1 for a
        deterministic objective); the objective is their mean."""
        raise NotImplementedError

    def distance(self, x_adv: Tensor, idx: Index) -> Tensor:
        return self.distance_draws(x_adv, idx).mean(dim=0)

    def _adversarial(self, d: Tensor, idx: Index) -> Tensor:
        # The solver keeps x + d in [0, 1]; the clamp only absorbs float32 rounding at the
        # bounds (its gradient is 1 on the closed box, so it changes nothing else).
        return (self._take(self.x, idx) + d).clamp(0.0, 1.0)

    def _penalty(self, d: Tensor, idx: Index) -> Tensor:
        return self._take(self.lams, idx) * torch.linalg.vector_norm(d.flatten(1), dim=1)

    def evaluate(self, d: Tensor, idx: Index = None) -> ObjectiveValue:
        """Δ and its distance part at distortion ``d`` (``[k, C, H, W]``) for problems ``idx``."""
        dist = self.distance(self._adversarial(d, idx), idx)
        return ObjectiveValue(total=dist + self._penalty(d, idx), distance=dist)

    def evaluate_with_error(self, d: Tensor, idx: Index = None) -> ObjectiveValue:
        """``evaluate`` plus the Monte-Carlo standard error of Δ over the objective's draws
        (std / √S; 0 for a deterministic objective)."""
        draws = self.distance_draws(self._adversarial(d, idx), idx)     # [S, k]
        n = draws.shape[0]
        dist = draws.mean(dim=0)
        se = draws.std(dim=0) / n ** 0.5 if n > 1 else torch.zeros_like(dist)
        return ObjectiveValue(total=dist + self._penalty(d, idx), distance=dist, se=se)

    def __call__(self, d: Tensor, idx: Index = None) -> Tensor:
        """Δ per problem, ``[k]``."""
        return self.evaluate(d, idx).total


class LatentObjective(_Objective):
    """Δ_latent = Σ_{i ∈ model.attack_layers} r(q(z^i | x+d), q(z^i | x^t)) + λ‖d‖ (eqs. 10–12).

    ``similarity``: "kl" (KL(q(z|x+d) ‖ q(z|x^t)), the paper's), "l2_mean" (‖μ(x+d) − μ(x^t)‖),
    "l2_sample" (‖z1 − z2‖ between a sample of each posterior, with noise fixed per problem and
    drawn independently for z1 and z2), or "w2" (2-Wasserstein distance). Encodings are
    deterministic (``sample=False``); the target's posteriors are computed once, without grad.
    """

    mode = LATENT

    def __init__(self, model, x: Tensor, x_target: Tensor, lams: Tensor,
                 similarity: str = DEFAULT_SIMILARITY[LATENT],
                 noise: Optional[Sequence[Tensor]] = None, noise_target: Optional[Sequence[Tensor]] = None):
        super().__init__(model, x, lams)
        if similarity not in LATENT_SIMILARITIES:
            raise ValueError(f"unknown latent similarity {similarity!r}; choose from {list(LATENT_SIMILARITIES)}")
        self.similarity = similarity
        self.r = LATENT_SIMILARITIES[similarity]
        self.layers = list(model.attack_layers)
        with torch.no_grad():
            enc_t = model.encode(x_target.detach(), sample=False)
        self.target = [tuple(t.detach() for t in posterior_params(enc_t.posteriors[i])) for i in self.layers]
        if self.r.sampled:
            if noise is None or noise_target is None:
                raise ValueError(f"{similarity} needs fixed noise for both posteriors (noise, noise_target)")
            # noise[l]: [P, z_dim] for every model layer; keep the attacked ones.
            self.eps = [noise[i].detach() for i in self.layers]
            self.z_target = [m + (0.5 * lv).exp() * noise_target[i].detach()
                             for (m, lv), i in zip(self.target, self.layers)]

    def distance_draws(self, x_adv: Tensor, idx: Index) -> Tensor:
        return self._latent_distance(x_adv, idx).unsqueeze(0)

    def _latent_distance(self, x_adv: Tensor, idx: Index) -> Tensor:
        enc = self.model.encode(x_adv, sample=False)
        total = x_adv.new_zeros(x_adv.shape[0])
        for k, i in enumerate(self.layers):
            m1, lv1 = posterior_params(enc.posteriors[i])
            if self.r.sampled:
                total = total + self.r.fn(m1, lv1, self._take(self.eps[k], idx),
                                          self._take(self.z_target[k], idx))
            else:
                m2, lv2 = self.target[k]
                total = total + self.r.fn(m1, lv1, self._take(m2, idx), self._take(lv2, idx))
        return total


class OutputObjective(_Objective):
    """Δ_output = −(E_{q(z|x+d)} log p(x^t|z) − KL(q(z|x+d) ‖ p(z))) + λ‖d‖ (eq. 9, sign fixed).

    The expectation is a Monte-Carlo average over ``S`` reparameterised samples whose noise is
    fixed per problem (``noise[l]`` is ``[S, P, z_dim_l]``); the KL is the model's
    ``kl_to_prior`` (the hierarchical prior for L ≥ 2) evaluated on the same samples. Minimising
    it is Expectation over Transformation (Athalye et al. 2018) with common random numbers:
    with S = 1 the solver fits that one draw (its Δ on fresh draws was a median 13× what it
    minimised), so the attack minimises the mean over S draws and is reported on fresh ones.
    """

    mode = OUTPUT
    similarity = ELBO

    def __init__(self, model, x: Tensor, x_target: Tensor, lams: Tensor, noise: Sequence[Tensor]):
        super().__init__(model, x, lams)
        self.x_target = x_target.detach()
        self.noise = [n.detach() for n in noise]
        self.n_samples = int(self.noise[0].shape[0])

    def distance_draws(self, x_adv: Tensor, idx: Index) -> Tensor:
        k, S = x_adv.shape[0], self.n_samples
        x_rep = x_adv.repeat(S, 1, 1, 1)                          # [S*k, ...], sample-major
        xt_rep = self._take(self.x_target, idx).repeat(S, 1, 1, 1)
        eps = [self._take(n.transpose(0, 1), idx).transpose(0, 1).reshape(S * k, -1)
               for n in self.noise]
        enc = self.model.encode(x_rep, eps=eps)
        elbo = self.model.log_likelihood(xt_rep, enc.z) - self.model.kl_to_prior(enc)
        return -elbo.reshape(S, k)


def build_objective(model, mode: str, similarity: str, x: Tensor, x_target: Tensor, lams: Tensor,
                    generators: Sequence[torch.Generator], mc_samples: int = 1) -> _Objective:
    """The objective for (mode, similarity), drawing its fixed noise from ``generators``
    (one per problem)."""
    if mode == LATENT:
        if similarity in LATENT_SIMILARITIES and LATENT_SIMILARITIES[similarity].sampled:
            n1 = sample_encoder_noise(model, x, generators, 1)
            n2 = sample_encoder_noise(model, x, generators, 1)
            return LatentObjective(model, x, x_target, lams, similarity,
                                   noise=[n[0] for n in n1], noise_target=[n[0] for n in n2])
        return LatentObjective(model, x, x_target, lams, similarity)
    if mode == OUTPUT:
        if similarity not in OUTPUT_SIMILARITIES:
            raise ValueError(f"the output attack's similarity is {ELBO!r}, got {similarity!r}")
        return OutputObjective(model, x, x_target, lams,
                               sample_encoder_noise(model, x, generators, mc_samples))
    raise ValueError(f"unknown attack mode {mode!r}; choose {' or '.join(map(repr, MODES))}")
