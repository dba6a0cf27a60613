"""Is a trained model fit to be measured? ``healthy``, ``plateau`` or ``collapsed``, and why.

A model that did not learn still gets attacked, and its numbers look like results: a decoder
stuck on the mean image is perfectly robust to noise, and an encoder whose variances froze at
their bound makes the KL between two posteriors, hence Δ_latent, as large as one likes. The
analysis therefore draws no conclusion from a trial that is not ``healthy``; this module gives
the verdict from the evaluation columns of its ``train/`` row (``sweep.evaluate``):

* ``collapsed``: the encoder tells the decoder nothing, i.e. no active unit (Burda et al. 2016)
  in any layer the decoder reads; or, in some layer, more than ``max_logvar_at_bound`` of the
  log-variances sit at the model's bound, where they no longer train (a frozen posterior).
* ``plateau``: the held-out ELBO does not beat the mean-image model (every pixel independent,
  the data's mean image as parameter: where training starts) by ``min_elbo_gain`` of the
  latter's magnitude.
* ``healthy``: neither.

Collapse is tested first: a constant encoder with a mean-image decoder is both, and collapse is
its cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

HEALTHY, PLATEAU, COLLAPSED = "healthy", "plateau", "collapsed"
HEALTH_VALUES = (HEALTHY, PLATEAU, COLLAPSED)


@dataclass
class HealthConfig:
    min_elbo_gain: float = 0.25        # fraction of |mean-image log-likelihood| the ELBO must gain
    max_logvar_at_bound: float = 0.01  # fraction of a layer's log-variances allowed at the bound


def classify(row: dict[str, Any], decoded_layers: Sequence[int],
             config: HealthConfig | None = None) -> tuple[str, str]:
    """(health, reason) of a trial from its evaluation columns: ``elbo``, ``elbo_mean_image``,
    ``active_units`` and ``logvar_at_bound`` (lists, layer 1 first). ``decoded_layers``: the
    0-based layers the decoder reads (``model.attack_layers``)."""
    config = config or HealthConfig()
    elbo, baseline = float(row["elbo"]), float(row["elbo_mean_image"])
    units, at_bound = list(row["active_units"]), list(row["logvar_at_bound"])
    summary = (f"held-out ELBO {elbo:.1f} vs {baseline:.1f} for the mean image "
               f"({_gain(elbo, baseline):+.0%}); active units {' | '.join(str(u) for u in units)}")

    if sum(units[i] for i in decoded_layers) == 0:
        layers = ", ".join(f"z{i + 1}" for i in decoded_layers)
        return COLLAPSED, f"no active unit in the layers the decoder reads ({layers}); {summary}"
    frozen = [(i, f) for i, f in enumerate(at_bound) if f > config.max_logvar_at_bound]
    if frozen:
        which = ", ".join(f"z{i + 1} {f:.0%}" for i, f in frozen)
        return COLLAPSED, f"log-variances frozen at their bound ({which}); {summary}"
    needed = baseline + config.min_elbo_gain * abs(baseline)
    if not math.isfinite(elbo) or elbo < needed:
        return PLATEAU, (f"held-out ELBO {elbo:.1f} does not beat the mean-image model's {baseline:.1f} "
                         f"by {config.min_elbo_gain:.0%} of its magnitude (needs >= {needed:.1f}); "
                         f"active units {' | '.join(str(u) for u in units)}")
    return HEALTHY, summary


def _gain(elbo: float, baseline: float) -> float:
    return (elbo - baseline) / abs(baseline) if baseline else math.inf
