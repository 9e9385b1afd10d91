"""The Ray function trainable: one trial, resumable from its Ray checkpoint, logged to its own MLflow run.

Per epoch: the metric dict goes to MLflow (one batch, step = epoch), then the keys Tune uses (the progress table's,
the search metric: TrialRuntime.tune_result) to `tune.report` with a checkpoint that also holds the MLflow run id,
so a retried (Ray's FailureConfig) or restored (Tuner.restore) trial continues its own run.
What MLflow could not take (a tracking server down longer than the client's retries) stays in the checkpoint's
outbox (ncood.tune.outbox) and is written first when the trial continues.
At the end: checkpoint.pt, config.json and summary.json become run artifacts, the fitted class Gaussians go into
the run's `ood_scorer` model (artifacts/gaussians.pt), the run FINISHED.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ray import tune

from ncood import checkpoint as checkpoint_file
from ncood import keys, tracking
from ncood.config import TrialConfig
from ncood.evaluate import extract
from ncood.pipeline import Trial, build_trial, save_artifacts, write_summary
from ncood.train import EpochCallback, every_epochs
from ncood.tune.grid import config_from_tune, run_name
from ncood.tune import trainable
from ncood.tune.outbox import STORE_ERRORS, Outbox, TrackingUnavailable
from ncood.tune.trainable import TrialRuntime

GAUSSIANS_FILE = "gaussians.pt"  # written by save_artifacts; logged inside the ood_scorer model only
FLUSH_EVERY_S = 5.0  # the outbox goes to MLflow at least this often (and at every checkpoint and the last epoch)
RUN_ID_FILE = "mlflow_run.json"  # inside every Ray checkpoint: {"mlflow_run_id": ..., "epoch": ...}


def val_accuracy(trainer, epoch: int, metrics: dict[str, float]) -> None:
    """Epoch callback: accuracy/val where the full evaluation did not run this epoch (a cheap forward pass)."""
    if keys.ACC_VAL in metrics or trainer.data.val.x.shape[0] == 0:
        return
    logits = extract(trainer.model, trainer.data.val.x, max(trainer.cfg.batch_size, 256))[1]
    metrics[keys.ACC_VAL] = float((logits.argmax(1) == trainer.data.val.y.to(logits.device)).double().mean())


def _checkpoint_dir(trainer, run_id: str, out: Path, outbox: Outbox | None = None) -> Path:
    trainer.save_checkpoint(out / "checkpoint.pt")
    (out / RUN_ID_FILE).write_text(json.dumps({"mlflow_run_id": run_id, "epoch": trainer.epoch}))
    if outbox is not None:
        outbox.save(out)
    return out


def _report_with_checkpoint(trainer, runtime: TrialRuntime, run_id: str, outbox: Outbox,
                            metrics: Mapping[str, float]) -> None:
    with tempfile.TemporaryDirectory() as d:  # tune.report copies it into the storage path
        _checkpoint_dir(trainer, run_id, Path(d), outbox)
        tune.report(runtime.tune_result(metrics, trainer.epoch), checkpoint=tune.Checkpoint.from_directory(d))


@dataclass
class EpochReporter:
    """Epoch callback (after the Evaluation callback): the epoch into the outbox and the outbox to MLflow, then
    tune.report (+ checkpoint). If MLflow cannot be written, a checkpoint of this epoch holding the outbox is
    reported and TrackingUnavailable ends the attempt: no epoch is lost (ncood.tune.outbox).

    The outbox goes to MLflow at every checkpoint, at the last epoch, and otherwise once FLUSH_EVERY_S have passed
    since it last went: epochs of a second (digits) then share one log_batch call instead of one each (an MLflow
    sqlite write of a full evaluation's ~200 metrics costs ~50 ms), while a CIFAR epoch is logged as it ends. An
    epoch not yet sent when the worker dies is re-run from the last checkpoint (whose outbox was sent) and sent then.
    """

    tracker: tracking.TrialTracker
    runtime: TrialRuntime
    outbox: Outbox
    last_flush: float = field(default_factory=time.monotonic)

    def __call__(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch > self.tracker.last_step:  # an epoch re-run after a retry from an older checkpoint was logged
            self.outbox.add_epoch(epoch, metrics)
            if epoch in self.runtime.keep_checkpoint_epochs:
                path = trainer.save_checkpoint(self.outbox.spool / f"epoch_{epoch:03d}.pt")
                self.outbox.add_file(path, "checkpoints")
        last = epoch == trainer.cfg.epochs
        checkpoint = every_epochs(self.runtime.checkpoint_every, trainer.cfg.epochs)(epoch)  # true at `last` too
        if last or checkpoint or time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            try:
                self.outbox.flush(self.tracker)  # first: a crash before the report re-runs the epoch, never re-logs
            except TrackingUnavailable:
                _report_with_checkpoint(trainer, self.runtime, self.tracker.run_id, self.outbox, metrics)
                raise
            self.last_flush = time.monotonic()
        if last:
            return  # the last report follows the artifacts (train_trial): ASHA may stop a trial at its report
        if checkpoint:
            _report_with_checkpoint(trainer, self.runtime, self.tracker.run_id, self.outbox, metrics)
        else:
            tune.report(self.runtime.tune_result(metrics, epoch))


def log_trial_outputs(tracker: tracking.TrialTracker, trial: Trial, out_dir: Path) -> None:
    """End-of-trial artifacts: checkpoint.pt (weights + optimizer + config), config.json, summary.json, and the MLflow
    pyfunc model `ood_scorer` that `ncood register` / `mlflow models serve` use. The fitted Gaussians are logged
    once, inside that model (artifacts/gaussians.pt): a second run-level copy cost 335 MB per trial at d = 2048."""
    from ncood.serve import log_ood_scorer  # here: the sweep's driver imports this module but logs no model

    tracker.log_artifacts(sorted(p for p in out_dir.iterdir() if p.name not in (RUN_ID_FILE, GAUSSIANS_FILE)))
    log_ood_scorer(trial, tracker.run_id, tracker.ref.tracking_uri)


def train_trial(config: dict[str, Any], runtime: TrialRuntime, epoch_callbacks: Sequence[EpochCallback] = ()) -> None:
    """The Ray function trainable: one trial, resumable from its Ray checkpoint, logged to its own MLflow run.
    epoch_callbacks: more `fn(trainer, epoch, metrics)` run after the evaluation and before the epoch is logged
    (a trainable that wraps this one adds its own)."""
    cfg = trainable.start(config_from_tune(config), runtime)
    with trainable.flat_memory(), tempfile.TemporaryDirectory(prefix="ncood-outbox-") as spool:
        _run_trial(config, runtime, cfg, Outbox(Path(spool)), epoch_callbacks)


def _run_trial(config: dict[str, Any], runtime: TrialRuntime, cfg: TrialConfig, outbox: Outbox,
               epoch_callbacks: Sequence[EpochCallback]) -> None:
    t0 = time.perf_counter()
    state, run_id = None, None
    checkpoint = tune.get_checkpoint()  # set on a retry (FailureConfig) and on Tuner.restore
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = checkpoint_file.load(Path(d) / "checkpoint.pt")
            run_id = json.loads((Path(d) / RUN_ID_FILE).read_text())["mlflow_run_id"]
            outbox.load(Path(d))  # what an earlier attempt could not write to MLflow
    tracker = tracking.TrialTracker(runtime.sweep, cfg, tune.get_context().get_trial_id(), run_name(config))
    try:
        done = tracker.finished_metrics(run_id)
    except STORE_ERRORS as e:  # the store is unreachable; the checkpoint (and its outbox) stays as is
        raise TrackingUnavailable(outbox.describe(runtime.sweep.tracking_uri, e)) from e
    if done is not None:  # finished and logged, but interrupted before Ray saw its last report: do not rerun
        tune.report(runtime.tune_result(done, cfg.epochs), checkpoint=checkpoint)
        return
    with trainable.run_marked_on_error(tracker):
        try:
            tracker.start(run_id)
        except STORE_ERRORS as e:
            raise TrackingUnavailable(outbox.describe(runtime.sweep.tracking_uri, e)) from e
        outbox.flush(tracker)
        callbacks = [val_accuracy] if runtime.val_every_epoch else []
        reporter = EpochReporter(tracker, runtime, outbox)
        trial = build_trial(cfg, callbacks=[*callbacks, *epoch_callbacks, reporter], progress=False, reuse_data=True)
        tracker.log_inputs(trial.data, trial.ood_sets)  # MLflow dataset inputs: name, source, digest
        if state is not None:
            trial.trainer.load_state_dict(state)
        trial.trainer.fit()
        final = trial.trainer.history[-1]
        if trial.evaluation.last_fit is None:  # restored after the last epoch: refit the scores for the artifacts
            trial.evaluation(trial.trainer, trial.trainer.epoch, final)
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            write_summary(trial, out, save_artifacts(trial, out), time.perf_counter() - t0)
            try:
                log_trial_outputs(tracker, trial, out)
                tracker.finish()
            except STORE_ERRORS as e:  # retry from this epoch, not from the one before
                _report_with_checkpoint(trial.trainer, runtime, tracker.run_id, outbox, final)
                raise TrackingUnavailable(outbox.describe(runtime.sweep.tracking_uri, e)) from e
            _checkpoint_dir(trial.trainer, tracker.run_id, out)
            tune.report(runtime.tune_result(final, cfg.epochs), checkpoint=tune.Checkpoint.from_directory(d))
