"""The NC intervention's recipe and groups (seed paper Sec. 4.2; ncood.intervention runs them), in a module of
their own so tune_jobs/nc_intervention.py builds its `--help` from them without importing torch, Ray or MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass

from ncood.config import ConfigError

GROUPS = {"control": "ce", "intervention": "nc"}  # group -> TrialConfig.loss


@dataclass(frozen=True)
class InterventionSettings:
    """The continuation recipe (seed paper Sec. 4.2); the same for both groups."""

    from_epoch: int = 10  # paper: 50 (of 350); digits default preset keeps a checkpoint at 10 (of 15)
    epochs: int = 20
    lr: float = 1e-2
    lr_step: int = 10  # LR x0.1 after this many continuation epochs (paper: 1e-2 -> 1e-3 after 10)
    batch_size: int = 2048

    def __post_init__(self) -> None:
        for name in ("from_epoch", "epochs", "lr_step", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}: must be > 0")
