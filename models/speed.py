"""Training at the hardware's speed: the precision a model trains in and its optimiser (issue 24).

``TrainingPrecision.choose(model, device, "auto")`` picks bf16 autocast where it was measured
faster, else float32:

* CUDA: bf16 where the GPU supports it (Ampere and later), with TF32 for what stays float32
  (``configure_device``);
* CPU: bf16 only on CPUs with bf16 matrix units (Intel AMX, the ``amx_bf16`` flag), where a bf16
  matmul runs ~7x the float32 rate (1.1 TFLOP/s against 158 GFLOP/s per core, torch 2.13), and
  only for the networks that gain: the conv net, and the MLP at width >= 512. Measured per
  training step (batch 256, one core, fused Adam both ways): MLP 1200 265 -> 123 ms, MLP 512
  111 -> 85 ms, MLP 128 no gain (its step is the TC estimator and element-wise ops, not
  matmuls), conv 493 -> 311 ms. A CPU without bf16 units would emulate it, slower.

Autocast runs the networks' matmuls and convolutions in bf16; the weights, their gradients and
Adam's state stay float32 (master weights), and the model casts every network output back to
float32 before the likelihood, the KLs and the TC estimator (``models.hierarchical``), so the
sums over 4,096 pixels and the log-sum-exps are float32. The conv decoder's transposed
convolutions take a sub-pixel form under CPU autocast (``models.networks``): oneDNN has no bf16
deconvolution.

``adam`` is Adam with the fused kernel on CPU and CUDA (one pass over parameters, gradients and
both moments): 17% of an MLP-1200 step was Adam's element-wise ops in the default foreach form.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models.config import PRECISIONS
from models.errors import ConfigError

# The MLP width from which bf16 autocast was measured faster on an AMX CPU (module docstring).
MIN_BF16_MLP_WIDTH = 512


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bf16 matrix units (Intel AMX-BF16), from /proc/cpuinfo; False where
    that file does not exist (macOS, Windows): bf16 is then not chosen automatically."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in text.splitlines())


def gains_from_bf16(model: nn.Module) -> bool:
    """Whether the model's network is one measured faster under bf16 autocast on an AMX CPU."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return False
    if cfg.architecture == "conv":
        return True
    return cfg.architecture == "mlp" and (cfg.hidden_dim or 1200) >= MIN_BF16_MLP_WIDTH


@dataclass(frozen=True)
class TrainingPrecision:
    """The dtype autocast runs the networks in during training (None: float32 throughout)."""

    autocast_dtype: torch.dtype | None
    device_type: str

    @property
    def name(self) -> str:
        return "float32" if self.autocast_dtype is None else "bfloat16"

    @classmethod
    def choose(cls, model: nn.Module, device: torch.device | str, precision: str = "auto") -> "TrainingPrecision":
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
        if precision == "float32":
            return cls(None, device.type)
        supported = _bf16_supported(device)
        if precision == "bfloat16":
            if not supported:
                raise ConfigError(f"precision='bfloat16': this {device.type} device has no bf16 "
                                  "support; use precision 'float32' or 'auto'")
            return cls(torch.bfloat16, device.type)
        fast = supported and (device.type == "cuda" or (cpu_has_bf16_units() and gains_from_bf16(model)))
        return cls(torch.bfloat16 if fast else None, device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context a training step's forward pass runs in (the backward follows it)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"   # emulated where the CPU lacks bf16 instructions


def adam(params, lr: float, device: torch.device | str) -> torch.optim.Adam:
    """Adam, with the fused kernel where the device has one (CPU, CUDA); foreach elsewhere."""
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def configure_device(device: torch.device | str) -> None:
    """Per-process settings for training on ``device``: on CUDA, TF32 for the float32 matmuls
    and convolutions left outside autocast, and cuDNN's autotuner (fixed batch shapes)."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
