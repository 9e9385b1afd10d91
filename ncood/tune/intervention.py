"""The NC intervention as a Ray Tune sweep (seed paper Sec. 4.2): every (source run, group) continuation is one
trial of the continuation trainable below, in one sweep of kind keys.KIND_NC_INTERVENTION.

The recipe (which config a continuation trains) is ncood.intervention; its sources (the ablation's no-L2 runs and
their kept checkpoints) come from ncood.runs_query.find_sources; the trainable's start, failure handling and memory
are ncood.tune.trainable's, as for the ablation trials.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from mlflow.tracking import MlflowClient
from ray import tune

from ncood import checkpoint, keys, runs_query, tracking
from ncood.config import TrialConfig
from ncood.intervention import GROUPS, InterventionSettings, continuation_config
from ncood.pipeline import build_trial
from ncood.tune import trainable
from ncood.tune.grid import NAME_FN_KEY
from ncood.tune.sweep import SweepResult, SweepSettings, SweepSpec, run_sweep
from ncood.tune.trainable import TrialRuntime


@dataclass
class _Reporter:
    """Epoch callback: the epoch's metrics to MLflow at step onset + epoch, then to Tune."""

    tracker: tracking.TrialTracker
    runtime: TrialRuntime
    onset: int

    def __call__(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_epoch(self.onset + epoch, metrics)
        tune.report(self.runtime.tune_result(metrics, epoch))


def continue_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """Ray function trainable: restore one source run's checkpoint and continue it as `config["group"]`."""
    src, group = config["source"], config["group"]
    st = InterventionSettings(**config["intervention"])
    cfg = trainable.start(continuation_config(TrialConfig.from_dict(src["config"]), group, st), runtime)
    tracker = tracking.TrialTracker(runtime.sweep, cfg, tune.get_context().get_trial_id(), trial_name_of(config))
    with trainable.flat_memory(), trainable.run_marked_on_error(tracker):
        tracker.start()
        tracker.set_tags({keys.TAG_GROUP: group, keys.TAG_SOURCE_RUN: src["run_id"],
                          keys.TAG_SOURCE_CONDITION: src["condition"], keys.TAG_ONSET: src["onset"],
                          keys.TAG_REQUESTED: src["requested"]})
        with tempfile.TemporaryDirectory() as d:
            path = MlflowClient(runtime.sweep.tracking_uri).download_artifacts(src["run_id"], src["checkpoint"], d)
            state = checkpoint.load(path)
        trial = build_trial(cfg, callbacks=[_Reporter(tracker, runtime, int(src["onset"]))], progress=False)
        trial.trainer.model.load_state_dict(state["model"])  # weights only: a fresh optimizer and schedule
        onset_metrics: dict[str, float] = {}
        trial.evaluation(trial.trainer, 0, onset_metrics)  # the reference every change is measured from
        tracker.log_epoch(int(src["onset"]), onset_metrics)
        trial.trainer.fit()
        tracker.finish()


@dataclass(frozen=True)
class SourceSelection:
    """Which runs of the ablation sweep to continue (ncood.runs_query.find_sources)."""

    experiment: str  # the ablation's MLflow experiment
    sweep_run_id: str | None = None  # default: its newest ablation sweep
    condition: str | None = None  # default: the sweep's only no-L2 condition
    seeds: Sequence[int] | None = None  # default: every seed
    groups: Sequence[str] = tuple(GROUPS)


def run_intervention(settings: SweepSettings, select: SourceSelection, st: InterventionSettings) -> SweepResult:
    """Find the sources, then run every (source, group) continuation as one ncood.tune sweep of kind nc_intervention."""
    client = MlflowClient(tracking.resolve_tracking_uri(settings.tracking_uri))
    sources = runs_query.find_sources(client, select.experiment, st.from_epoch, sweep_run_id=select.sweep_run_id,
                                      condition=select.condition, seeds=select.seeds)
    space = {"source": tune.grid_search(sources), "group": tune.grid_search(list(select.groups)),
             "intervention": asdict(st), NAME_FN_KEY: f"{__name__}:trial_name_of"}
    onsets = sorted({s["onset"] for s in sources})
    params = {"source_experiment": select.experiment, "source_condition": sources[0]["condition"],
              "source_sweep_run_id": select.sweep_run_id or "newest", "seeds": len(sources),
              "groups": list(select.groups), "onset_epochs": onsets,
              **{f"intervention.{k}": v for k, v in asdict(st).items()}}
    ood = list(sources[0]["config"].get("ood_sets") or [])
    columns = {keys.LOSS_TRAIN: "loss", keys.nc_key("nc1"): "NC1",
               **({keys.ood_key(ood[0], "gmm", "auroc"): f"AUROC {ood[0]}"} if ood else {})}
    spec = SweepSpec(space, kind=keys.KIND_NC_INTERVENTION, metric_columns=columns, sweep_params=params,
                     parameter_columns=("group",), trainable=continue_trial)
    return run_sweep(settings, spec)


def trial_name_of(config: Mapping[str, Any]) -> str:
    """Ray trial and MLflow run name: '<group>-<source run name>' (ncood.tune.grid.run_name calls it)."""
    return f"{config['group']}-{config['source']['run_name']}"
