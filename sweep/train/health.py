"""Is a trained model fit to be measured? ``healthy``, ``plateau`` or ``collapsed``, and why.

A model that did not learn still gets attacked, and its numbers look like results: a decoder
stuck on the mean image is perfectly robust to noise, and an encoder whose variances froze at
their bound makes the KL between two posteriors, hence Δ_latent, as large as one likes. The
analysis therefore draws no conclusion from a trial that is not ``healthy``; this module gives
the verdict from the evaluation columns of its ``train/`` row (``sweep.train.evaluate``):

* ``collapsed``: the encoder tells the decoder nothing, i.e. no active unit (Burda et al. 2016)
  in any layer the decoder reads; or none in the layer β acts on (a hierarchy's top layer z^L,
  which the decoder of a β-TCDLGM does not read and Seatbelt's reads beside the others): its
  β then weighs a layer that carries nothing, and the trial says nothing about β; or, in some
  layer, more than ``max_logvar_at_bound`` of the log-variances sit at the model's bound, where
  they no longer train (a frozen posterior).
* ``crippled``: more than ``max_dead_first_layer`` of the image encoder's first-layer units
  never activate on the evaluation images (dead ReLUs: they pass no gradient, so they never
  train again). The encoder then runs on the few that are left; with the paper's 2x - 1 input
  that was 84-94% dead in every MLP (issue 31), and such a model is not the architecture the
  trial names.
* ``plateau``: the model did not leave the mean-image model (every pixel independent, the
  data's mean image as parameter: where training starts). Its reconstructions explain less
  than ``min_recon_r2`` of the held-out pixel variance around the mean image (``recon_r2``, a
  share, so one threshold serves every likelihood), or its held-out ELBO does not beat the
  mean-image model's log-likelihood: for a Bernoulli likelihood by ``min_elbo_gain`` of the
  latter's magnitude, for a Gaussian at all. A relative gain needs a log-likelihood with a
  scale: a Bernoulli's is a log-probability, at most 0; a Gaussian's is a log-density that
  moves with the pixel scale and can sit near 0, where a relative gain means nothing.
* ``healthy``: none of these.

Collapse is tested first: a constant encoder with a mean-image decoder is both, and collapse is
its cause; then a crippled encoder, which may be why a model stayed on the plateau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from results.schema import TRAIN_ELBO

HEALTHY, PLATEAU, CRIPPLED, COLLAPSED = "healthy", "plateau", "crippled", "collapsed"
HEALTH_VALUES = (HEALTHY, PLATEAU, CRIPPLED, COLLAPSED)


@dataclass
class HealthConfig:
    min_elbo_gain: float = 0.25        # Bernoulli: fraction of |mean-image log-likelihood| the ELBO must gain
    min_recon_r2: float = 0.2          # share of held-out pixel variance (around the mean image) to explain
    max_logvar_at_bound: float = 0.01  # fraction of a layer's log-variances allowed at the bound
    max_dead_first_layer: float = 0.5  # fraction of the encoder's first-layer units allowed dead


def classify(row: dict[str, Any], decoded_layers: Sequence[int], config: HealthConfig | None = None,
             *, beta_layer: int | None = None, likelihood: str = "bernoulli") -> tuple[str, str]:
    """(health, reason) of a trial from its evaluation columns: ``elbo``, ``elbo_mean_image``,
    ``recon_r2`` and ``dead_first_layer`` (their rules are skipped where the row has none: rows
    of older versions), ``active_units`` and ``logvar_at_bound`` (lists, layer 1 first). ``decoded_layers``: the
    0-based layers the decoder reads (``model.decoded_layers``); ``beta_layer``: the one β acts
    on (``model.beta_layer``); ``likelihood``: the model's, "bernoulli" or "gaussian"."""
    config = config or HealthConfig()
    elbo, baseline = float(row[TRAIN_ELBO]), float(row["elbo_mean_image"])
    r2 = _number(row.get("recon_r2"))
    units, at_bound = list(row["active_units"]), list(row["logvar_at_bound"])
    unit_text = f"active units {' | '.join(str(u) for u in units)}"
    r2_text = "" if r2 is None else f"; reconstructions explain {r2:.0%} of the pixel variance"
    summary = (f"held-out ELBO {elbo:.1f} vs {baseline:.1f} for the mean image "
               f"({_gain(elbo, baseline):+.0%}){r2_text}; {unit_text}")

    collapse = _collapse(units, at_bound, decoded_layers, beta_layer, config)
    if collapse:
        return COLLAPSED, f"{collapse}; {summary}"
    dead = _number(row.get("dead_first_layer"))
    if dead is not None and dead > config.max_dead_first_layer:
        return CRIPPLED, (f"{dead:.0%} of the encoder's first-layer units never activate (allowed "
                          f"{config.max_dead_first_layer:.0%}); {summary}")
    plateau = _plateau(elbo, baseline, r2, likelihood, config)
    if plateau:
        return PLATEAU, f"{plateau}; {unit_text}"
    return HEALTHY, summary


def verdict(row: dict[str, Any], model: Any, config: HealthConfig | None = None) -> tuple[str, str]:
    """``classify`` for ``model`` (a ``models.HierarchicalVAE``): the layers its decoder reads,
    the layer β acts on and its likelihood come from the model itself."""
    return classify(row, model.decoded_layers, config, beta_layer=model.beta_layer,
                    likelihood=model.cfg.likelihood)


def _collapse(units: list[int], at_bound: list[float], decoded_layers: Sequence[int],
              beta_layer: int | None, config: HealthConfig) -> str:
    """Why the encoder collapsed, or "" if it did not."""
    if sum(units[i] for i in decoded_layers) == 0:
        layers = ", ".join(f"z{i + 1}" for i in decoded_layers)
        return f"no active unit in the layers the decoder reads ({layers})"
    if beta_layer is not None and units[beta_layer] == 0:
        return f"no active unit in z{beta_layer + 1}, the layer β acts on"
    frozen = [(i, f) for i, f in enumerate(at_bound) if f > config.max_logvar_at_bound]
    if frozen:
        which = ", ".join(f"z{i + 1} {f:.0%}" for i, f in frozen)
        return f"log-variances frozen at their bound ({which})"
    return ""


def _plateau(elbo: float, baseline: float, r2: float | None, likelihood: str,
             config: HealthConfig) -> str:
    """Why the model is on the mean-image plateau, or "" if it left it."""
    gain = config.min_elbo_gain if likelihood == "bernoulli" else 0.0
    needed = baseline + gain * abs(baseline)
    if not math.isfinite(elbo) or elbo < needed or (not gain and elbo <= baseline):
        by = f"by {gain:.0%} of its magnitude " if gain else ""
        return (f"held-out ELBO {elbo:.1f} does not beat the mean-image model's {baseline:.1f} "
                f"{by}(needs {'>=' if gain else '>'} {needed:.1f})")
    if r2 is not None and not r2 >= config.min_recon_r2:
        return (f"reconstructions explain {r2:.0%} of the held-out pixel variance around the mean "
                f"image (needs >= {config.min_recon_r2:.0%})")
    return ""


def _number(value: Any) -> float | None:
    """A column's value as a float, or None where the row has none (missing or NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _gain(elbo: float, baseline: float) -> float:
    return (elbo - baseline) / abs(baseline) if baseline else math.inf
