"""Expanding the grid into trials, each with a readable id that stays the same across resumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweep.config import SweepConfig


@dataclass(frozen=True)
class TrialSpec:
    dataset: str
    model: str
    beta: float
    layers: int
    z_dim: int
    seed: int

    @property
    def trial_id(self) -> str:
        beta = f"{self.beta:g}".replace(".", "p")
        return f"{self.dataset}-{self.model}-b{beta}-L{self.layers}-z{self.z_dim}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trial_id": self.trial_id}


def checkpoint_relpath(trial_id: str) -> str:
    """Where a finished trial's model file lives in the results folder."""
    return f"checkpoints/{trial_id}.pt"


def model_accepts(model: str, beta: float, layers: int) -> bool:
    """Which grid points a model kind takes: the paper's four kinds are one model family that
    differ in layers and beta, so the grid keeps only the combinations that name each kind."""
    if model == "vae":
        return beta == 1 and layers == 1
    if model == "tcvae":
        return layers == 1
    return layers >= 2  # tcdlgm, seatbelt


def expand_grid(cfg: "SweepConfig") -> list[TrialSpec]:
    grid = cfg.grid
    specs = []
    for dataset, model, z_dim, seed in product(grid.datasets, grid.models, grid.z_dims, grid.seeds):
        for beta, layers in product(sorted(set(map(float, grid.betas))), sorted(set(grid.layers))):
            if model_accepts(model, beta, layers):
                specs.append(TrialSpec(dataset, model, beta, layers, z_dim, seed))
    return specs
