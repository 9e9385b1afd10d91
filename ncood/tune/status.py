"""MLflow run statuses from Ray's view of the trials: what a trial's own process could not record.

A trial marks its own run FINISHED, or FAILED with the error when it raises. It cannot when its process dies
(SIGKILL, the kernel's or Ray's out-of-memory killer, a lost node), when Tune stops it (ASHA, Ctrl+C), or when
the tracking store itself is what failed. The driver does it from Tune's callbacks and, at the end, from the
experiment state (`close_orphans`), tagging why a trial failed (`failure_kind`: tracking | oom | killed | error).

The driver's writes must not end a sweep either: if the tracking store is unreachable they are skipped with a
warning; the end-of-sweep pass (or `--resume` once the store is back) repeats them.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

from ray import tune

from ncood import keys, tracking
from ncood.tune.grid import config_from_tune, trial_name

# failure_kind tag values, most specific first: the first whose pattern occurs in the error text wins.
FAILURE_KINDS: tuple[tuple[str, re.Pattern], ...] = (
    # The trial's outbox is in its checkpoint (ncood.tune.outbox); --resume writes it.
    ("tracking", re.compile(r"TrackingUnavailable")),
    # Ray's memory monitor (ray.exceptions.OutOfMemoryError, "killed due to the node running low on memory"),
    # torch.cuda.OutOfMemoryError ("CUDA out of memory"), Python's MemoryError.
    ("oom", re.compile(r"OutOfMemoryError|running low on memory|out of memory|MemoryError|memory monitor", re.I)),
    # The worker process vanished without a Python error: a signal (SIGKILL: also the kernel's OOM killer; Ray
    # cannot tell which, see the text), a crash (SIGSEGV), a lost node.
    ("killed", re.compile(r"worker process has died|died unexpectedly|Worker exit type|NodeDiedError|SIGKILL")),
)
DEFAULT_KIND = "error"  # a Python exception in the trial


def failure_kind(error_text: str) -> str:
    """'tracking' | 'oom' | 'killed' | 'error' for a trial's error text (Ray's error file or a traceback)."""
    for kind, pattern in FAILURE_KINDS:
        if pattern.search(error_text):
            return kind
    return DEFAULT_KIND


def trial_error(trial) -> str:
    """Ray's account of a failed trial: its error file (the latest failure), with the attempt count."""
    path = trial.error_file
    text = Path(path).read_text() if path and Path(path).exists() else "trial failed (no error file)"
    return f"Ray trial {trial.trial_id} failed after {trial.num_failures} attempt(s)\n{text}"


def best_effort(what: str, write: Callable[[], object]) -> bool:
    """Run an MLflow write of the driver; on failure print a warning instead of ending the sweep."""
    try:
        write()
        return True
    except Exception as e:  # noqa: BLE001 - the store may be down; the end-of-sweep pass or --resume redoes it
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        print(f"ncood: could not {what} ({type(e).__name__}: {first}); it is redone at the end of the sweep "
              f"or on --resume", file=sys.stderr, flush=True)
        return False


class SweepStatusCallback(tune.Callback):
    """Keeps MLflow run statuses true where the trial's own process could not: an actor killed by the OS, a trial
    stopped early by ASHA, Ctrl+C. Tune pickles it into the experiment state, so a restored sweep keeps it."""

    def __init__(self, ref: tracking.SweepRef) -> None:
        self.ref = ref

    def _running_run(self, trial_id: str):
        run = tracking.trial_run(self.ref, trial_id)
        return run if run is not None and run.info.status == tracking.ACTIVE else None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        def write():
            run = self._running_run(trial.trial_id)  # normally the trial finished its run itself
            if run is not None:
                tags = {keys.TAG_STOPPED_EARLY: str(trial.last_result.get("epoch", "?"))}
                tracking.set_status(self.ref, run.info.run_id, tracking.FINISHED, tags)
        best_effort(f"close the run of trial {trial.trial_id}", write)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """A failed attempt that Ray retries from the last checkpoint (same run): note what happened. A trial that
        raised has done so itself; one whose process died (SIGKILL, OOM) could not."""
        def write():
            run = tracking.trial_run(self.ref, trial.trial_id)
            if run is not None:
                text = trial_error(trial)
                tracking.set_tags(self.ref, run.info.run_id, {
                    keys.TAG_PREVIOUS_ERROR: tracking.truncate(text),
                    keys.TAG_PREVIOUS_FAILURE_KIND: failure_kind(text)})
        best_effort(f"note the failure of trial {trial.trial_id}", write)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        def write():
            run = self._running_run(trial.trial_id)
            if run is not None:
                text = trial_error(trial)
                tracking.set_status(self.ref, run.info.run_id, tracking.FAILED, {
                    keys.TAG_ERROR: tracking.truncate(text), keys.TAG_FAILURE_KIND: failure_kind(text)})
        best_effort(f"mark the run of trial {trial.trial_id} FAILED", write)

    def on_experiment_end(self, trials, **info) -> None:
        interrupted = any(t.status not in ("TERMINATED", "ERROR") for t in trials)
        best_effort("close the runs of the sweep", lambda: close_runs(self.ref, trials, interrupted))


def trial_errors(trials) -> dict[str, str]:
    """{trial id: error text} of the trials that ended in ERROR."""
    return {t.trial_id: trial_error(t) for t in trials if t.status == "ERROR"}


def close_runs(ref: tracking.SweepRef, trials, interrupted: bool) -> list[tuple[str, str]]:
    """tracking.close_orphans with each errored trial's failure_kind; an errored trial that never got as far as
    creating its run (killed while starting, e.g. by Ray's memory monitor) gets a FAILED run of its own, so
    every failure is visible in MLflow."""
    errors = trial_errors(trials)
    kinds = {t: failure_kind(e) for t, e in errors.items()}
    for trial in trials:
        if trial.trial_id in errors and tracking.trial_run(ref, trial.trial_id) is None:
            _record_errored_trial(ref, trial, errors[trial.trial_id], kinds[trial.trial_id])
    return tracking.close_orphans(ref, errors, interrupted, kinds=kinds)


def _record_errored_trial(ref: tracking.SweepRef, trial, error: str, kind: str) -> None:
    """The run the trial would have created (name, params, tags), FAILED with Ray's error."""
    try:
        cfg = config_from_tune(trial.config)
    except Exception:  # noqa: BLE001 - not an ablation/search trial (the NC intervention): a run without params
        cfg = None
    if cfg is not None:
        run_id = tracking.TrialTracker(ref, cfg, trial.trial_id, trial_name(trial)).start()
    else:
        run_id = tracking.create_trial_run(ref, trial.trial_id, trial_name(trial))
    tracking.set_status(ref, run_id, tracking.FAILED,
                        {keys.TAG_ERROR: tracking.truncate(error), keys.TAG_FAILURE_KIND: kind})
