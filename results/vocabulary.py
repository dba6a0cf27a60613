"""The attack vocabulary: the two modes, the similarities and each similarity's unit. Every other
module names a mode or a similarity through these constants, never by a string literal
(``tests/test_results.py`` checks it), so one word has one home.

    mode     similarities                          default  unit of Δ
    latent   kl, l2_mean, l2_sample, w2, plugins   kl       nats (kl), latent L2 / W2 distance
    output   elbo                                  elbo     nats

The latent similarities are a registry: ``attacks.objectives.register_similarity`` adds one and
records its unit here through ``register_similarity_unit``, so the figures can label a plugin's
Δ. The output attack has one similarity, the ELBO of the target, and no registry.

The words are part of the results folder: they are the ``mode`` and ``similarity`` values of
the ``attacks/`` and ``gallery/`` tables and part of every attack file's name
(``results.layout.attack_file``), so a name takes lower-case letters, digits and ``_`` only.
Imports only the standard library and ``results.errors``: ``analysis`` reads it without torch.
"""

from __future__ import annotations

import re

from results.errors import ConfigError

LATENT = "latent"  # match the target's posterior q(z | x^t): a similarity r between posteriors
OUTPUT = "output"  # make the decoder reconstruct the target: the ELBO of x^t given x + d
MODES = (LATENT, OUTPUT)

KL = "kl"                 # KL(q(z|x+d) ‖ q(z|x^t)), the paper's
L2_MEAN = "l2_mean"       # ‖μ(x+d) − μ(x^t)‖₂ (Kos et al. 2018)
L2_SAMPLE = "l2_sample"   # ‖z1 − z2‖₂ between one fixed sample of each posterior
W2 = "w2"                 # 2-Wasserstein distance between the posteriors
ELBO = "elbo"             # the output attack's: −ELBO of x^t under q(z | x+d)

DEFAULT_SIMILARITY = {LATENT: KL, OUTPUT: ELBO}
OUTPUT_SIMILARITIES = (ELBO,)

_NAME = re.compile(r"^[a-z0-9_]+$")  # what results.layout's attack file names can carry


class UnknownSimilarity(ConfigError, KeyError):
    """A similarity with no registered unit. A ``ConfigError`` (the CLIs print it as one line)
    and a ``KeyError`` (a lookup that missed), so a reader that tolerates a plugin it did not
    import can catch it as the latter."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


_UNITS: dict[str, str] = {}


def register_similarity_unit(name: str, unit: str) -> None:
    """Record the unit of Δ under similarity ``name``, as an axis label shows it ("Δ (nats)").
    Registering a name again replaces its unit, as ``register_similarity`` replaces its function."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"similarity name {name!r}: use lower-case letters, digits and _ (it is "
                          "part of every attack file's name)")
    if not isinstance(unit, str) or not unit.strip():
        raise ConfigError(f"similarity {name!r}: its unit must be a non-empty string, e.g. 'nats' "
                          "or 'latent L2 distance' (the figures label Δ with it)")
    _UNITS[name] = unit


def unit_of(similarity: str) -> str:
    """The unit of Δ under ``similarity``; ``UnknownSimilarity`` if none is registered."""
    try:
        return _UNITS[similarity]
    except (KeyError, TypeError):
        raise UnknownSimilarity(
            f"similarity {similarity!r} has no registered unit (known: {', '.join(_UNITS)}): import "
            "the module that registers it first (a sweep config lists it in plugins), or call "
            "results.vocabulary.register_similarity_unit") from None


def similarity_names() -> tuple[str, ...]:
    """Every similarity with a unit: the built-in ones first, then in the order registered."""
    return tuple(_UNITS)


def mode_of_similarity(similarity: str) -> str:
    """The mode a similarity belongs to: ``OUTPUT`` for the ELBO, ``LATENT`` for every other
    registered one; ``UnknownSimilarity`` for a name with no registration."""
    unit_of(similarity)
    return OUTPUT if similarity in OUTPUT_SIMILARITIES else LATENT


for _name, _unit in ((KL, "nats"), (L2_MEAN, "latent L2 distance"), (L2_SAMPLE, "latent L2 distance"),
                     (W2, "latent W2 distance"), (ELBO, "nats")):
    register_similarity_unit(_name, _unit)
