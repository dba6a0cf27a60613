"""ModelConfig: every knob of the model kinds in one plain dataclass, and the vocabularies its
fields take: the model kinds (the registry ``models.kinds``), the architectures (the registry
below, filled by ``models.networks``), the likelihoods and the TC estimators.

A config is data: it round-trips through ``to_dict``/``from_dict`` (JSON-able, stored in every
checkpoint) and ``validate()`` turns a bad value into a ``ConfigError`` that names the field,
the value and what is allowed, before any network is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from models import kinds
from models.errors import ConfigError
from results import validation as check

LIKELIHOODS = ("bernoulli", "gaussian")
TC_ESTIMATORS = ("mws", "mss")
# What the image encoder reads (``HierarchicalVAE.encoder_input``): the pixels minus the training
# data's mean image, the pixels as they are (Chen et al.'s code), or 2x - 1 (the paper's [-1, 1];
# what checkpoints of format version 2 were trained on). See docs/MODELS.md for the measurement
# that chose "centred": a constant input shared by every image kills most first-layer ReLUs.
ENCODER_INPUTS = ("centred", "pixels", "symmetric")
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
    encoder_input: str = "centred"    # centred (x - mean image) | pixels (x) | symmetric (2x - 1)

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
        check.one_of("model.architecture", self.architecture, ARCHITECTURES)
        for name in ("channels", "image_size", "z_dim", "layers"):
            check.integer(f"model.{name}", getattr(self, name), 1)
        check.number("model.beta", self.beta, 0.0)
        check.one_of("model.likelihood", self.likelihood, LIKELIHOODS)
        if self.gaussian_scale is not None:
            if self.likelihood != "gaussian":
                raise check.problem("model.gaussian_scale", self.gaussian_scale,
                                    f"only applies to likelihood='gaussian'; set it to None for "
                                    f"likelihood={self.likelihood!r}")
            check.number("model.gaussian_scale", self.gaussian_scale, 0.0, strict=True,
                         also="(a fixed std) or None (learned)")
        check.flag("model.condition_on_x", self.condition_on_x)
        self._validate_free_bits()
        check.one_of("model.tc_estimator", self.tc_estimator, TC_ESTIMATORS)
        check.one_of("model.encoder_input", self.encoder_input, ENCODER_INPUTS)
        check.integer("model.dataset_size", self.dataset_size, 1)
        for name in ("hidden_dim", "chain_hidden_dim"):
            if getattr(self, name) is not None:
                check.integer(f"model.{name}", getattr(self, name), 1, also="or None")
        self._validate_kind_rules(kind)
        return self

    def _validate_free_bits(self) -> None:
        if not isinstance(self.free_bits, (list, tuple)):
            check.number("model.free_bits", self.free_bits, 0.0,
                         also="(nats; a number, or a list of one number per layer)")
            return
        check.numbers("model.free_bits", self.free_bits, 0.0, also="(nats, one per layer, layer 1 first)")
        if len(self.free_bits) != self.layers:
            raise check.problem("model.free_bits", self.free_bits,
                                f"has {len(self.free_bits)} values but layers={self.layers}: give one "
                                "value per layer (layer 1 first) or a single number for all layers")

    def _validate_kind_rules(self, kind: kinds.KindSpec) -> None:
        # The kinds differ by the L and beta they take (and what the decoder sees, and their
        # regulariser); catch the combinations that would silently train a different model
        # than the name says. (These name two fields, so they keep their own shape.)
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
        d = dict(check.known_fields("model config", d, check.field_names(cls)))
        if isinstance(d.get("free_bits"), tuple):
            d["free_bits"] = list(d["free_bits"])
        return cls(**d)

