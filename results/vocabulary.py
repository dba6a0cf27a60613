"""The attack vocabulary: modes, similarities and their units (torch-free, part of the contract)."""

from __future__ import annotations

LATENT = "latent"
OUTPUT = "output"
MODES = (LATENT, OUTPUT)

KL = "kl"
L2_MEAN = "l2_mean"
L2_SAMPLE = "l2_sample"
W2 = "w2"
ELBO = "elbo"

DEFAULT_SIMILARITY = {LATENT: KL, OUTPUT: ELBO}
OUTPUT_SIMILARITIES = (ELBO,)

_UNITS: dict[str, str] = {}


def register_similarity_unit(name: str, unit: str) -> None:
    """Record the unit of similarity ``name`` (what the figures put on a Δ axis)."""
    _UNITS[name] = unit


def unit_of(similarity: str) -> str:
    """The unit of Δ under ``similarity``."""
    try:
        return _UNITS[similarity]
    except KeyError:
        raise KeyError(f"similarity {similarity!r} has no registered unit (known: {sorted(_UNITS)}); "
                       f"register it with results.vocabulary.register_similarity_unit") from None


def similarity_names() -> tuple[str, ...]:
    """Every similarity with a registered unit."""
    return tuple(_UNITS)


for _name, _unit in ((KL, "nats"), (ELBO, "nats"), (L2_MEAN, "latent L2 distance"),
                     (L2_SAMPLE, "latent L2 distance"), (W2, "latent W2 distance")):
    register_similarity_unit(_name, _unit)
