"""The registry of model kinds: each kind is one ``KindSpec``, and everything that depends on the
kind (the model, config validation, the grid, the resource plan, the report's labels and
colours) reads it from here.

The kinds are one model family (``models.hierarchical``) that differ by the values of L and β
they take, which latent layers the decoder reads (and a latent attack must match), and the
regulariser added to the ELBO. The built-in four, and what a new one gives::

    from models.kinds import KindSpec, register
    register(KindSpec(name="betavae", label="β-VAE", colour="#ff7f0e", max_layers=1,
                      regulariser=lambda terms, beta: (beta - 1.0) * terms.kls[-1].mean()))

A sweep config names modules that register kinds (``plugins``), imported before the config is
validated, on the driver and on every worker. This module imports nothing heavier than the
standard library, so ``analysis`` (which runs without torch) reads labels and colours here; a
kind that the analysis process does not know (a plugin it did not import) is shown by its name
in ``DEFAULT_COLOUR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from results.errors import ConfigError

DEFAULT_COLOUR = "#9467bd"


def first_layer(layers: int) -> tuple[int, ...]:
    """The decoder reads z^1 only (p(x | z^1)): VAE, β-TCVAE, β-TCDLGM."""
    return (0,)


def all_layers(layers: int) -> tuple[int, ...]:
    """The decoder reads every layer (Seatbelt-VAE's skip connections)."""
    return tuple(range(layers))


def tc_penalty(terms: Any, beta: float) -> Any:
    """The built-in kinds' regulariser, eq. 8's (β − 1)·TC of the top layer: with the KL of
    every layer already in the loss, the top layer's terms come to MI + β·TC + dim-KL.
    ``terms``: ``models.hierarchical.KLTerms`` (per-sample tensors); returns a scalar tensor."""
    return (beta - 1.0) * terms.tc.mean()


@dataclass(frozen=True)
class KindSpec:
    """One model kind. ``decoded_layers(L)`` and ``attacked_layers(L)`` give 0-based layer
    indices; ``regulariser(terms, beta)`` is what the kind adds to −ELBO (its free-bits-floored
    KLs are in the loss already), called by the model only."""

    name: str                      # the config's and the Parquet's ``model`` value
    label: str                     # how figures and tables name it
    colour: str = DEFAULT_COLOUR   # its colour in every figure
    min_layers: int = 1            # the L it takes: min_layers <= L <= max_layers
    max_layers: int | None = None  # None: no upper bound
    beta: float | None = None      # the one β it takes (the plain VAE's 1); None: any β >= 0
    decoded_layers: Callable[[int], Sequence[int]] = first_layer
    attacked_layers: Callable[[int], Sequence[int]] | None = None  # None: the decoded layers
    regulariser: Callable[[Any, float], Any] = tc_penalty

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("_", "").isalnum() \
                or not self.name.islower():
            raise ConfigError(f"model kind name {self.name!r}: use lower-case letters, digits and _ "
                              "(it is part of every trial id)")
        if not isinstance(self.min_layers, int) or self.min_layers < 1 or \
                (self.max_layers is not None and self.max_layers < self.min_layers):
            raise ConfigError(f"model kind {self.name!r}: min_layers={self.min_layers!r}, "
                              f"max_layers={self.max_layers!r} must satisfy 1 <= min <= max")

    # ---------------------------------------------------------------- rules
    def takes_layers(self, layers: int) -> bool:
        return self.min_layers <= layers and (self.max_layers is None or layers <= self.max_layers)

    def takes_beta(self, beta: float) -> bool:
        return self.beta is None or beta == self.beta

    def beta_or(self, preferred: float) -> float:
        """``preferred`` if the kind takes any β, else the one it takes."""
        return preferred if self.beta is None else self.beta

    def accepts(self, beta: float, layers: int) -> bool:
        """Whether (β, L) is a point of this kind: the grid keeps only those."""
        return self.takes_layers(layers) and self.takes_beta(beta)

    @property
    def varies_in_layers(self) -> bool:
        """Whether L tells two trials of this kind apart (figures then print it)."""
        return self.max_layers != self.min_layers

    def layer_rule(self) -> str:
        if self.max_layers == self.min_layers:
            return f"layers = {self.min_layers}"
        if self.max_layers is None:
            return f"layers >= {self.min_layers}"
        return f"{self.min_layers} <= layers <= {self.max_layers}"

    def needs(self) -> str:
        """What a grid must hold for this kind, e.g. "it needs beta = 1 and layers = 1"."""
        beta = f"beta = {self.beta:g} and " if self.beta is not None else ""
        return f"it needs {beta}{self.layer_rule()}"

    def attack_layers(self, layers: int) -> list[int]:
        chosen = self.attacked_layers or self.decoded_layers
        return list(chosen(layers))


_KINDS: dict[str, KindSpec] = {}


def register(spec: KindSpec, replace: bool = False) -> KindSpec:
    """Add a kind. Registering the same spec again is a no-op (a module imported twice); another
    spec under a taken name needs ``replace=True``."""
    if not isinstance(spec, KindSpec):
        raise ConfigError(f"register() takes a KindSpec, got {type(spec).__name__}")
    known = _KINDS.get(spec.name)
    if known is not None and known != spec and not replace:
        raise ConfigError(f"model kind {spec.name!r} is registered already; choose another name "
                          "or pass replace=True")
    _KINDS[spec.name] = spec
    return spec


def get(name: str) -> KindSpec:
    """The kind called ``name``; ConfigError naming the registered ones if there is none."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"kind={name!r} is not a registered model kind: use one of {', '.join(_KINDS)}, or import "
            "the module that registers it first (a sweep config lists it in plugins)") from None


def names() -> tuple[str, ...]:
    """Every registered kind, the built-in ones first, in the order they were registered."""
    return tuple(_KINDS)


def label(name: str) -> str:
    """The kind's display label; its name if this process does not know it."""
    spec = _KINDS.get(name)
    return spec.label if spec else str(name)


def colour(name: str) -> str:
    spec = _KINDS.get(name)
    return spec.colour if spec else DEFAULT_COLOUR


def varies_in_layers(name: str) -> bool:
    """Whether figures print L for this kind (yes for a kind this process does not know)."""
    spec = _KINDS.get(name)
    return spec.varies_in_layers if spec else True


def sort_key(name: str) -> tuple[int, str]:
    """Registry order, unknown kinds last by name."""
    order = names()
    return (order.index(name) if name in order else len(order), str(name))


BUILT_IN = (
    KindSpec("vae", "VAE", "#7f7f7f", min_layers=1, max_layers=1, beta=1.0),
    KindSpec("tcvae", "β-TCVAE", "#1f77b4", min_layers=1, max_layers=1),
    KindSpec("tcdlgm", "β-TCDLGM", "#d62728", min_layers=2),
    KindSpec("seatbelt", "Seatbelt-VAE", "#2ca02c", min_layers=2, decoded_layers=all_layers),
)
for _spec in BUILT_IN:
    register(_spec)
