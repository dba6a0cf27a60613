"""Expanding the grid into trials, each with a readable id that stays the same across resumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from itertools import product
from typing import Any

from results import kinds, layout
from results.records import GridConfig


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
        return layout.trial_id(self.dataset, self.model, self.beta, self.layers, self.z_dim, self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the grid fields and the trial id), e.g. for Tune's trial config."""
        return {**asdict(self), "trial_id": self.trial_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrialSpec":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def expand_grid(grid: GridConfig) -> list[TrialSpec]:
    """Every grid point a model kind takes (``KindSpec.accepts``): the kinds are one model
    family that differ in layers and β, so the grid keeps only the combinations that name each."""
    specs = []
    for dataset, model, z_dim, seed in product(grid.datasets, grid.models, grid.z_dims, grid.seeds):
        kind = kinds.get(model)
        for beta, layers in product(sorted(set(map(float, grid.betas))), sorted(set(grid.layers))):
            if kind.accepts(beta, layers):
                specs.append(TrialSpec(dataset, model, beta, layers, z_dim, seed))
    return specs
