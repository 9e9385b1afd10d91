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

MLflow: one sweep (parent) run of kind "nc_intervention" in the intervention experiment, one child run per
(source run, group) tagged `group`, `source_run_id`, `source_condition`, `onset_epoch`; metrics at step = epoch of
the source run's timeline (onset = the restored epoch, then onset+1 .. onset+epochs). The Ray/MLflow plumbing is
ncood.tune's (run_sweep with this module's trainable); aggregation is ncood.aggregate.intervention.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune

from ncood import checkpoint, keys, tracking
from ncood.config import ConfigError, TrialConfig
from ncood.pipeline import build_trial
from ncood.tune.grid import NAME_FN_KEY
from ncood.tune.sweep import SweepResult, SweepSettings, run_sweep
from ncood.tune.trial import TrialRuntime
from ncood.intervention_settings import GROUPS, InterventionSettings  # noqa: F401  (re-exported)

KIND = "nc_intervention"  # tracking.TAG_KIND of the sweep run
TAG_GROUP, TAG_SOURCE_RUN, TAG_SOURCE_CONDITION = "group", "source_run_id", "source_condition"
TAG_ONSET, TAG_REQUESTED = "onset_epoch", "requested_epoch"
CHECKPOINT_DIR = "checkpoints"  # ncood.tune.trial.EpochReporter logs checkpoints/epoch_NNN.pt there
_CKPT = re.compile(r"epoch_(\d+)\.pt$")


def continuation_config(source: TrialConfig, group: str, st: InterventionSettings) -> TrialConfig:
    """The source run's config with the continuation recipe; the groups differ only in `loss`."""
    if group not in GROUPS:
        raise ConfigError(f"group {group!r}: choose one of {sorted(GROUPS)}")
    return source.replace(loss=GROUPS[group], lr=st.lr, lr_steps=(st.lr_step,), batch_size=st.batch_size,
                          epochs=st.epochs, eval_every=1)


# ---- the driver: which runs, which checkpoints -----------------------------------------------------------------------
def checkpoint_epochs(client: MlflowClient, run_id: str) -> dict[int, str]:
    """{epoch: artifact path} of the run's kept checkpoints (checkpoints/epoch_NNN.pt)."""
    out = {}
    for f in client.list_artifacts(run_id, CHECKPOINT_DIR):
        m = _CKPT.search(f.path)
        if m:
            out[int(m.group(1))] = f.path
    return out


def find_sources(tracking_uri: str | None, experiment: str, from_epoch: int, *, sweep_run_id: str | None = None,
                 condition: str | None = None, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """The finished no-L2 trial runs of the newest ablation sweep of `experiment` (or `sweep_run_id`), one condition
    (`condition`, or the only no-L2 one), each with the checkpoint at `from_epoch` or the latest one before it."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} in {uri}; run tune_jobs/ablation.py first "
                          f"(or pass --experiment and --tracking-uri as it used)")
    flt = f"tags.`{tracking.TAG_ROLE}` = 'sweep' and tags.`{tracking.TAG_KIND}` = 'ablation'"
    if sweep_run_id is None:
        sweeps = client.search_runs([exp.experiment_id], flt, max_results=1, order_by=["attributes.start_time DESC"])
        if not sweeps:
            raise ConfigError(f"experiment {experiment!r} holds no ablation sweep run")
        sweep_run_id = sweeps[0].info.run_id
    ref = tracking.SweepRef(uri, exp.experiment_id, sweep_run_id)
    runs = [r for r in tracking.child_runs(ref) if r.info.status == tracking.FINISHED
            and r.data.params.get("l2") == "False" and r.data.tags.get(tracking.TAG_ROLE) == "trial"]
    conditions = sorted({r.data.tags.get(tracking.TAG_CONDITION, "?") for r in runs})
    if condition is None:
        if len(conditions) != 1:
            raise ConfigError(f"sweep {sweep_run_id}: {len(conditions)} finished no-L2 conditions {conditions}; "
                              f"choose one with --condition")
        condition = conditions[0]
    runs = [r for r in runs if r.data.tags.get(tracking.TAG_CONDITION) == condition]
    if seeds is not None:
        runs = [r for r in runs if int(r.data.tags.get(tracking.TAG_SEED, -1)) in set(seeds)]
    if not runs:
        raise ConfigError(f"sweep {sweep_run_id}: no finished no-L2 runs of condition {condition!r} "
                          f"(found conditions {conditions})")
    sources = []
    for r in sorted(runs, key=lambda r: int(r.data.tags.get(tracking.TAG_SEED, 0))):
        kept = {e: p for e, p in checkpoint_epochs(client, r.info.run_id).items() if e <= from_epoch}
        if not kept:
            raise ConfigError(f"run {r.info.run_name} ({r.info.run_id}) kept no checkpoint at or before epoch "
                              f"{from_epoch}; rerun the ablation with --keep-checkpoint-epochs {from_epoch}")
        onset = max(kept)
        fields = {f.name for f in dataclasses.fields(TrialConfig)}  # runs also carry score/<name>/<field> params
        values = {k: _param(k, v) for k, v in r.data.params.items() if k in fields}
        # where the data lives is a tag (tracking.MACHINE_FIELDS); the device is chosen again for the continuation
        values |= {k: _param(k, r.data.tags[k]) for k in ("data_root", "download") if k in r.data.tags}
        cfg = TrialConfig.from_dict(values)
        sources.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "seed": cfg.seed,
                        "condition": condition, "config": cfg.to_dict(), "checkpoint": kept[onset], "onset": onset,
                        "requested": from_epoch})
    return sources


def _param(name: str, value: str) -> Any:
    """An MLflow param string back to its TrialConfig field value (the runs were logged from TrialConfig.to_dict)."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(TrialConfig)}.get(name, "str").removesuffix(" | None")
    if value == "None":
        return None
    if kind == "bool":
        return value == "True"
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if name in ("ood_sets", "lr_steps"):
        return [int(v) if name == "lr_steps" else v for v in value.split(",") if v]
    return value


# ---- the trainable ---------------------------------------------------------------------------------------------------
@dataclass
class _Reporter:
    """Epoch callback: the epoch's metrics to MLflow at step onset + epoch, then to Tune."""

    tracker: tracking.TrialTracker
    onset: int

    def __call__(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_epoch(self.onset + epoch, metrics)
        tune.report({**metrics, "epoch": epoch})


def continue_trial(config: dict[str, Any], runtime: TrialRuntime) -> None:
    """Ray function trainable: restore one source run's checkpoint and continue it as `config["group"]`."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    torch.set_num_threads(max(1, int(runtime.cpus_per_trial)))
    src, group = config["source"], config["group"]
    st = InterventionSettings(**config["intervention"])
    cfg = continuation_config(TrialConfig.from_dict(src["config"]), group, st)
    if cfg.device == "auto":
        cfg = cfg.replace(device="cuda" if ray.get_gpu_ids() else "cpu")
    tracker = tracking.TrialTracker(runtime.sweep, cfg, tune.get_context().get_trial_id(),
                                    f"{group}-{src['run_name']}")
    try:
        tracker.start()
        tracker.set_tags({TAG_GROUP: group, TAG_SOURCE_RUN: src["run_id"], TAG_SOURCE_CONDITION: src["condition"],
                          TAG_ONSET: src["onset"], TAG_REQUESTED: src["requested"]})
        with tempfile.TemporaryDirectory() as d:
            path = MlflowClient(runtime.sweep.tracking_uri).download_artifacts(src["run_id"], src["checkpoint"], d)
            state = checkpoint.load(path)
        trial = build_trial(cfg, callbacks=[_Reporter(tracker, int(src["onset"]))], progress=False)
        trial.trainer.model.load_state_dict(state["model"])  # weights only: a fresh optimizer and schedule
        onset_metrics: dict[str, float] = {}
        trial.evaluation(trial.trainer, 0, onset_metrics)  # the reference every change is measured from
        tracker.log_epoch(int(src["onset"]), onset_metrics)
        trial.trainer.fit()
        tracker.finish()
    except SystemExit:
        raise
    except BaseException as e:
        tracker.fail(e)
        raise


def run_intervention(settings: SweepSettings, source_experiment: str, st: InterventionSettings, *,
                     sweep_run_id: str | None = None, condition: str | None = None,
                     seeds: Sequence[int] | None = None, groups: Sequence[str] = tuple(GROUPS)) -> SweepResult:
    """Find the sources, then run every (source, group) continuation as one ncood.tune sweep of kind nc_intervention."""
    sources = find_sources(settings.tracking_uri, source_experiment, st.from_epoch, sweep_run_id=sweep_run_id,
                           condition=condition, seeds=seeds)
    space = {"source": tune.grid_search(sources), "group": tune.grid_search(list(groups)),
             "intervention": asdict(st), NAME_FN_KEY: f"{__name__}:trial_name_of"}
    onsets = sorted({s["onset"] for s in sources})
    params = {"source_experiment": source_experiment, "source_condition": sources[0]["condition"],
              "source_sweep_run_id": sweep_run_id or "newest", "seeds": len(sources), "groups": list(groups),
              "onset_epochs": onsets, **{f"intervention.{k}": v for k, v in asdict(st).items()}}
    ood = list(sources[0]["config"].get("ood_sets") or [])
    columns = {keys.LOSS_TRAIN: "loss", keys.nc_key("nc1"): "NC1",
               **({keys.ood_key(ood[0], "gmm", "auroc"): f"AUROC {ood[0]}"} if ood else {})}
    return run_sweep(settings, space, kind=KIND, metric_columns=columns, sweep_params=params,
                     parameter_columns=["group"], trainable=continue_trial)


def default_experiment(source_experiment: str) -> str:
    return f"{source_experiment}-nc-intervention"


def trial_name_of(config: Mapping[str, Any]) -> str:
    """Ray trial and MLflow run name: '<group>-<source run name>' (ncood.tune.grid.run_name calls it)."""
    return f"{config['group']}-{config['source']['run_name']}"
