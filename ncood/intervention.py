"""The NC intervention experiment (seed paper Sec. 4.2, Figs. 3-4): does more Neural Collapse cause better OoD
detection?

The no-L2 runs of an ablation sweep are restored from their checkpoint at `from_epoch` (paper: 50 of 350; the
digits default: 10 of 15) and each seed is continued twice with the same code and settings except the loss:

    control       cross-entropy                                   (TrialConfig.loss = "ce")
    intervention  the differentiable NC metrics, no cross-entropy  (TrialConfig.loss = "nc", ncood.collapse.nc_loss)

with a fresh SGD (momentum/weight decay of the source run) at lr 1e-2, x0.1 after 10 epochs, batch 2048, 20 epochs,
and the full evaluation (NC metrics + every OoD score) at the onset and after every epoch. Checkpoints come from the
ablation job's `keep_checkpoint_epochs` (MLflow artifacts `checkpoints/epoch_NNN.pt`); without one at exactly
`from_epoch` the latest one before it is used and recorded (tags `onset_epoch` and `requested_epoch`).

This module is the recipe only (no Ray, no MLflow): how a continuation's TrialConfig is derived from its source.
The sources are found by ncood.runs_query.find_sources; the continuation runs as a sweep with the trainable of
ncood.tune.intervention: one sweep (parent) run of kind keys.KIND_NC_INTERVENTION in the intervention experiment,
one child run per (source run, group) tagged keys.TAG_GROUP, TAG_SOURCE_RUN, TAG_SOURCE_CONDITION, TAG_ONSET,
TAG_REQUESTED; metrics at step = epoch of the source run's timeline (onset = the restored epoch, then onset+1 ..
onset+epochs). Aggregation is ncood.aggregate.intervention.
"""
from __future__ import annotations

from dataclasses import dataclass

from ncood.config import ConfigError, TrialConfig

GROUPS = {"control": "ce", "intervention": "nc"}  # group (tag keys.TAG_GROUP) -> TrialConfig.loss


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


def continuation_config(source: TrialConfig, group: str, st: InterventionSettings) -> TrialConfig:
    """The source run's config with the continuation recipe; the groups differ only in `loss`."""
    if group not in GROUPS:
        raise ConfigError(f"group {group!r}: choose one of {sorted(GROUPS)}")
    return source.replace(loss=GROUPS[group], lr=st.lr, lr_steps=(st.lr_step,), batch_size=st.batch_size,
                          epochs=st.epochs, eval_every=1)


def default_experiment(source_experiment: str) -> str:
    """The MLflow experiment the continuation logs into."""
    return f"{source_experiment}-nc-intervention"
