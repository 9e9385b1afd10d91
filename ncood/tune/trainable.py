"""What every ncood Ray function trainable shares: the runtime it receives, its start (Ray's log level, torch
threads, the device Ray assigned), its failure handling (the MLflow run FAILED with the error and its kind) and
flat memory on reused workers.

A trainable is `fn(config, runtime)` (ncood.tune.sweep.Trainable): ncood.tune.trial.train_trial (the ablation and
search trials) and ncood.tune.intervention.continue_trial (the NC intervention) are built on these pieces.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Mapping

import ray
import torch

from ncood import tracking
from ncood.config import TrialConfig
from ncood.tune import worker_memory
from ncood.tune.status import failure_kind


@dataclass(frozen=True)
class TrialRuntime:
    """How trials run and where they log; the same for every trial of a sweep (and saved for --resume)."""

    sweep: tracking.SweepRef
    cpus_per_trial: float = 1
    checkpoint_every: int = 1  # Ray checkpoint every k epochs, and always at the end
    keep_checkpoint_epochs: tuple[int, ...] = ()  # also log checkpoints/epoch_NNN.pt to MLflow (NC intervention)
    val_every_epoch: bool = False  # accuracy/val at every epoch (a search metric must be in every result)
    tune_keys: tuple[str, ...] | None = None  # the metric keys a Tune result carries besides `epoch`; None: all

    def tune_result(self, metrics: Mapping[str, float], epoch: int) -> dict[str, float]:
        """What a trial reports to Tune for one epoch: the keys Tune uses (tune_keys: the progress table's columns,
        the search or scheduler metric) and `epoch`. Every metric goes to MLflow (the trial's tracker), which is
        where ncood reads results; Tune's driver handles each reported key of each result several times (its
        JSON/CSV/TensorBoard result logs, each trial's metric statistics, the experiment-state snapshot), which
        for the ~200 keys of a full evaluation cost it ~0.35 s of CPU per trial (docs/method.md#trap-ray)."""
        kept = metrics if self.tune_keys is None else {k: metrics[k] for k in self.tune_keys if k in metrics}
        return {**kept, "epoch": epoch}


def start(cfg: TrialConfig, runtime: TrialRuntime) -> TrialConfig:
    """Set up this worker thread for one trial; returns `cfg` on the device Ray assigned."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint successfully created" per epoch
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "Validating input example ..." per logged model
    torch.set_num_threads(max(1, int(runtime.cpus_per_trial)))  # Ray reserves these cores; torch would take all
    if cfg.device == "auto":  # what Ray assigned, not what is visible: Ray 2.60 hides no GPU from a 0-GPU trial
        cfg = cfg.replace(device="cuda" if ray.get_gpu_ids() else "cpu")
    return cfg


@contextlib.contextmanager
def flat_memory() -> Iterator[None]:
    """worker_memory.release() before the trial (what an earlier trial of this reused worker left: one stopped early
    skips its own) and after it, however it ends, except when Tune stops it (SystemExit): Tune waits for this
    thread to end before reusing the worker."""
    worker_memory.release()
    try:
        yield
    except SystemExit:
        raise
    except BaseException:
        worker_memory.release()
        raise
    worker_memory.release()


@contextlib.contextmanager
def run_marked_on_error(tracker: tracking.TrialTracker) -> Iterator[None]:
    """An error inside marks the trial's run FAILED (error tag and failure_kind) and propagates, so Ray retries the
    trial (from its checkpoint) or records it as ERROR. SystemExit is Tune stopping the trial (ASHA, Ctrl+C): the
    driver sets the run's status then."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as e:
        tracker.fail(e, failure_kind(tracking.error_text(e)))
        raise
