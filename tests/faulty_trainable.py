"""A trainable that fails on purpose, for the failure tests: ncood's own train_trial with one more epoch callback
that raises InjectedFailure at a chosen epoch, before that epoch is logged. It reaches the sweep the way any
trainable does (ncood.tune.sweep.SweepSpec.trainable); production code knows nothing of it.

The param_space key FAULT_KEY holds a list of {"epoch": E, "seeds": [...], "marker_dir": "/abs/dir" or None}: a
matching trial raises at epoch E; with marker_dir only once (a marker file per trial), so the retry from the last
checkpoint passes; without marker_dir on every attempt, so the trial ends FAILED. ('_'-prefixed keys are not
TrialConfig fields: ncood.tune.grid.config_from_tune leaves them out.)

Ray workers do not import the tests folder: `by_value()` makes Ray's cloudpickle ship this module's code with
the trainable.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ncood.tune.trainable import TrialRuntime
from ncood.tune.trial import train_trial

FAULT_KEY = "_fault"


class InjectedFailure(RuntimeError):
    """The error the failing trainable raises."""


@dataclass(frozen=True)
class FailAt:
    """Epoch callback: raise InjectedFailure at `epoch` for the trials of `seeds` (every seed if None)."""

    epoch: int
    seeds: Sequence[int] | None = None
    marker_dir: str | None = None

    def __call__(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        cfg = trainer.cfg
        if epoch != self.epoch or (self.seeds is not None and cfg.seed not in self.seeds):
            return
        if self.marker_dir:
            marker = Path(self.marker_dir) / f"{cfg.condition}-s{cfg.seed}-e{epoch}"
            if marker.exists():
                return
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        raise InjectedFailure(f"injected failure at epoch {epoch} ({cfg.condition} seed {cfg.seed})")


def failing_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """train_trial, failing where config[FAULT_KEY] says."""
    train_trial(config, runtime, epoch_callbacks=[FailAt(**spec) for spec in config.get(FAULT_KEY) or ()])


def by_value() -> None:
    """Pickle this module's functions by value for Ray (its workers cannot import the tests folder)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
