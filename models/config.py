"""ModelConfig: every knob of the model kinds in one plain dataclass, and the vocabularies its
fields take: the model kinds (the registry ``models.kinds``), the architectures (the registry
below, filled by ``models.networks``), the likelihoods and the TC estimators.

A config is data: it round-trips through ``to_dict``/``from_dict`` (JSON-able, stored in every
checkpoint) and ``validate()`` turns a bad value into a ``ConfigError`` that names the field,
the value and what is allowed, before any network is built.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from models import kinds
from models.errors import ConfigError

LIKELIHOODS = ("bernoulli", "gaussian")
TC_ESTIMATORS = ("mws", "mss")
# What a model trains in (models.speed): auto picks bf16 autocast where it was measured faster.
PRECISIONS = ("auto", "float32", "bfloat16")

# The image networks by name: builder(cfg, decoder_in) -> models.networks.Architecture. The
# built-in ones (mlp, conv) are registered by models.networks, users add theirs the same way.
Builder = Callable[["ModelConfig", int], Any]
ARCHITECTURES: dict[str, Builder] = {}


def register_architecture(name: str, builder: Builder) -> None:
    """Make ``ModelConfig(architecture=name)`` build with ``builder(cfg, decoder_in)``."""
    if not isinstance(name, str) or not name:
        raise ValueError("an architecture name must be a non-empty string")
    ARCHITECTURES[name] = builder

# Width of the small MLPs of the latent chain (q(z^{i+1}|z^i[,x]) and p(z^i|z^{i+1})) when
# neither chain_hidden_dim nor hidden_dim is given. Not published; a modest default.
DEFAULT_CHAIN_HIDDEN = 256


@dataclass
class ModelConfig:
    kind: str = "vae"                 # a registered kind (models.kinds): vae | tcvae | tcdlgm | seatbelt built in
    architecture: str = "mlp"         # a name in models.networks' registry (mlp | conv built in)
    channels: int = 1                 # image channels (1 greyscale / binary, 3 RGB)
    image_size: int = 64              # images are square, image_size x image_size
    z_dim: int = 10                   # latent dimensions per stochastic layer
    layers: int = 1                   # number of stochastic layers L
    beta: float = 1.0                 # weight of the top layer's total correlation
    likelihood: str = "bernoulli"     # bernoulli (on logits) | gaussian
    gaussian_scale: float | None = None   # gaussian only: fixed std in pixel units; None = learned
    condition_on_x: bool = False      # False: the paper's chain q(z^{i+1}|z^i) (eq. 6), every kind;
                                      # True: the 2021 version's q(z^{i+1} | z^i, x)
    free_bits: float | list[float] = 0.0  # nats per layer (float for all, or a list of L); 0 = off
    tc_estimator: str = "mws"         # mws (minibatch-weighted) | mss (minibatch-stratified)
    dataset_size: int = 737280        # N of the training set, used by the TC estimators
    hidden_dim: int | None = None     # None: the beta-TCVAE paper widths; int: shrink (smoke runs)
    chain_hidden_dim: int | None = None  # latent-chain MLP width; None: hidden_dim or 256

    # ---------------------------------------------------------------- derived values
    @property
    def free_bits_per_layer(self) -> list[float]:
        """Free bits of every layer, layer 1 first (a float applies to all layers)."""
        if isinstance(self.free_bits, (list, tuple)):
            return [float(v) for v in self.free_bits]
        return [float(self.free_bits)] * self.layers

    @property
    def chain_width(self) -> int:
        if self.chain_hidden_dim is not None:
            return self.chain_hidden_dim
        return self.hidden_dim if self.hidden_dim is not None else DEFAULT_CHAIN_HIDDEN

    # ---------------------------------------------------------------- validation
    def validate(self) -> "ModelConfig":
        """Raise ConfigError naming the first bad field; return self so calls can chain."""
        kind = kinds.get(self.kind)
        _choice("architecture", self.architecture, tuple(ARCHITECTURES))
        _positive_int("channels", self.channels)
        _positive_int("image_size", self.image_size)
        _positive_int("z_dim", self.z_dim)
        _positive_int("layers", self.layers)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) \
                or not math.isfinite(self.beta) or self.beta < 0:
            raise ConfigError(f"beta={self.beta!r} is not allowed: use a finite number >= 0")
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        if self.gaussian_scale is not None:
            if self.likelihood != "gaussian":
                raise ConfigError(
                    f"gaussian_scale={self.gaussian_scale!r} only applies to likelihood='gaussian'; "
                    f"set gaussian_scale=None for likelihood={self.likelihood!r}")
            if isinstance(self.gaussian_scale, bool) or not isinstance(self.gaussian_scale, (int, float)) \
                    or not math.isfinite(self.gaussian_scale) or self.gaussian_scale <= 0:
                raise ConfigError(f"gaussian_scale={self.gaussian_scale!r} is not allowed: use a "
                                  "positive number (fixed std) or None (learned)")
        if not isinstance(self.condition_on_x, bool):
            raise ConfigError(f"condition_on_x={self.condition_on_x!r} is not allowed: use true or false")
        self._validate_free_bits()
        _choice("tc_estimator", self.tc_estimator, TC_ESTIMATORS)
        _positive_int("dataset_size", self.dataset_size)
        if self.hidden_dim is not None:
            _positive_int("hidden_dim", self.hidden_dim, none_ok=True)
        if self.chain_hidden_dim is not None:
            _positive_int("chain_hidden_dim", self.chain_hidden_dim, none_ok=True)
        self._validate_kind_rules(kind)
        return self

    def _validate_free_bits(self) -> None:
        values = self.free_bits if isinstance(self.free_bits, (list, tuple)) else [self.free_bits]
        if isinstance(self.free_bits, (list, tuple)) and len(values) != self.layers:
            raise ConfigError(f"free_bits has {len(values)} values but layers={self.layers}: give one "
                              "value per layer (layer 1 first) or a single number for all layers")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"free_bits={self.free_bits!r} is not allowed: use nats >= 0 "
                                  "(a number, or a list of one number per layer)")

    def _validate_kind_rules(self, kind: kinds.KindSpec) -> None:
        # The kinds differ by the L and beta they take (and what the decoder sees, and their
        # regulariser); catch the combinations that would silently train a different model
        # than the name says.
        others = [name for name in kinds.names() if kinds.get(name).accepts(self.beta, self.layers)]
        instead = f" (kinds that take layers={self.layers}, beta={self.beta:g}: {', '.join(others)})" if others else ""
        if not kind.takes_layers(self.layers):
            raise ConfigError(f"layers={self.layers} with kind={self.kind!r}: {kind.label} takes "
                              f"{kind.layer_rule()}{instead}")
        if not kind.takes_beta(self.beta):
            raise ConfigError(f"beta={self.beta} with kind={self.kind!r}: {kind.label} takes "
                              f"beta = {kind.beta:g}{instead}")

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["free_bits"], tuple):
            d["free_bits"] = list(d["free_bits"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a plain dict; unknown keys raise ConfigError, missing keys take defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a mapping of field names, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}; allowed: {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("free_bits"), tuple):
            d["free_bits"] = list(d["free_bits"])
        return cls(**d)


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed: use one of {', '.join(allowed)}")


def _positive_int(field: str, value: Any, none_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if none_ok else ""
        raise ConfigError(f"{field}={value!r} is not allowed: use a whole number >= 1{extra}")
