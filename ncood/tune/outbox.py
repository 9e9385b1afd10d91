"""What a trial has not written to MLflow yet: epoch metrics and artifact files, carried in its Ray checkpoint.

MLflow's client retries a failing request for a while (MLFLOW_HTTP_REQUEST_MAX_RETRIES and friends; `retry_budget`
below, deploy/README.md has the measurements). A tracking server that stays down longer makes the request raise.
The trial must not lose the epoch it was logging: its metrics (with their original timestamps) and any file it
was uploading go into this outbox; the trial saves a Ray checkpoint holding the outbox and ends with
`TrackingUnavailable`. When Ray retries the trial (--max-failures) or the sweep is resumed (--resume), the
trial starts from that checkpoint, sends the outbox first, then trains on.

Sending twice is harmless: MLflow stores a metric once per (key, step, timestamp, value), and the entries keep
their timestamps, so an entry the server received before the client saw the error is not duplicated. Epochs
that were logged before never enter the outbox (TrialTracker.last_step).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import requests
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from ncood import tracking

OUTBOX_FILE = "outbox.json"  # in a Ray checkpoint dir; the files go to OUTBOX_DIR next to it
OUTBOX_DIR = "outbox"
_URLLIB3_BACKOFF_MAX = 120.0  # urllib3 2.x Retry.DEFAULT_BACKOFF_MAX: no single wait is longer
# What the MLflow client raises when the store cannot be written: MLflow wraps HTTP and database errors in
# MlflowException; requests' and OS errors (connections, local files of a sqlite store) may come through as such.
STORE_ERRORS = (MlflowException, requests.RequestException, OSError)


class TrackingUnavailable(tracking.TrackingError):
    """MLflow could not be written after the client's own retries; nothing was lost (see the message)."""


def retry_budget(environ: Mapping[str, str] | None = None) -> float:
    """Seconds MLflow 3.17's client keeps retrying one request against a server that refuses connections.

    MLflow builds a urllib3 Retry(total=R, backoff_factor=f) from MLFLOW_HTTP_REQUEST_MAX_RETRIES (R, default 7) and
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR (f, default 2) (mlflow/utils/request_utils.py). urllib3 2.x sleeps 0 after the
    first failure and min(120, f * 2**(n-1)) after the n-th, so the waits add up to
    sum_{n=2..R} min(120, f * 2**(n-1)) (244 s by default), plus up to MLFLOW_HTTP_REQUEST_BACKOFF_JITTER (default
    1 s) per wait. A server that accepts connections but does not answer costs MLFLOW_HTTP_REQUEST_TIMEOUT (default
    120 s) per attempt on top; that part is not included here."""
    env = os.environ if environ is None else environ
    retries = int(env.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
    factor = float(env.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2))
    return sum(min(_URLLIB3_BACKOFF_MAX, factor * 2 ** (n - 1)) for n in range(2, retries + 1))


@dataclass
class Outbox:
    """Pending metrics [{"step", "timestamp", "metrics"}] and files [{"file", "artifact_path"}], oldest first.
    `spool` is a local folder that holds the pending files while the trial runs."""

    spool: Path
    metrics: list[dict] = field(default_factory=list)
    artifacts: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.artifacts)

    def add_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        self.metrics.append({"step": int(step), "timestamp": int(time.time() * 1000),
                             "metrics": {k: float(v) for k, v in metrics.items()}})

    def add_file(self, path: Path, artifact_path: str | None) -> None:
        """Move `path` into the spool; it is uploaded to `artifact_path` of the run on the next flush."""
        folder = Path(tempfile.mkdtemp(dir=self.spool))  # one folder per entry: the file keeps its name
        shutil.move(str(path), folder / path.name)
        self.artifacts.append({"file": f"{folder.name}/{path.name}", "artifact_path": artifact_path})

    def flush(self, tracker: tracking.TrialTracker) -> None:
        """Send everything, oldest first; what was sent leaves the outbox. On failure: TrackingUnavailable."""
        try:
            while self.metrics:  # oldest first, as many epochs per log_batch call as the metric cap allows
                chunk = self._next_chunk()
                tracker.log_epochs([(e["step"], e["metrics"], e["timestamp"]) for e in chunk])
                del self.metrics[:len(chunk)]
            while self.artifacts:
                entry = self.artifacts[0]
                path = self.spool / entry["file"]
                tracker.log_artifacts([path], entry["artifact_path"])
                shutil.rmtree(path.parent)
                self.artifacts.pop(0)
        except STORE_ERRORS as e:  # the entries not sent stay for the next attempt
            raise TrackingUnavailable(self.describe(tracker.ref.tracking_uri, e)) from e

    def _next_chunk(self) -> list[dict]:
        """The oldest pending epochs whose metrics fit one MLflow log_batch call (at least one epoch)."""
        chunk, n = [], 0
        for entry in self.metrics:
            n += len(entry["metrics"])
            if chunk and n > MAX_METRICS_PER_BATCH:
                break
            chunk.append(entry)
        return chunk

    def describe(self, tracking_uri: str, error: BaseException) -> str:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        steps = sorted({m["step"] for m in self.metrics})
        waiting = (f"epoch(s) {steps[0]}..{steps[-1]}" if len(steps) > 1 else f"epoch {steps[0]}") if steps else ""
        files = f"{len(self.artifacts)} file(s)" if self.artifacts else ""
        what = " and ".join(x for x in (f"metrics of {waiting}" if waiting else "", files) if x) or "nothing"
        return (f"cannot write to the tracking store {tracking_uri} ({type(error).__name__}: {first}). MLflow's "
                f"client retried for about {retry_budget():.0f} s (MLFLOW_HTTP_REQUEST_MAX_RETRIES, "
                f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR). Not lost: {what} wait in this trial's Ray checkpoint and "
                f"are written when the trial is retried (--max-failures) or the sweep resumed (--resume) with "
                f"the store reachable.")

    def save(self, ckpt_dir: Path) -> None:
        """Into a Ray checkpoint dir: the list as JSON, the files copied (the spool keeps its own)."""
        (ckpt_dir / OUTBOX_FILE).write_text(json.dumps({"metrics": self.metrics, "artifacts": self.artifacts}))
        for entry in self.artifacts:
            (ckpt_dir / OUTBOX_DIR / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.spool / entry["file"], ckpt_dir / OUTBOX_DIR / entry["file"])

    def load(self, ckpt_dir: Path) -> None:
        """From a Ray checkpoint dir (one without an outbox: nothing pending). Files are copied into the spool:
        a local checkpoint dir is Ray's own copy and must stay as it is."""
        path = ckpt_dir / OUTBOX_FILE
        if not path.exists():
            return
        saved = json.loads(path.read_text())
        self.metrics, self.artifacts = list(saved["metrics"]), list(saved["artifacts"])
        for entry in self.artifacts:
            (self.spool / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt_dir / OUTBOX_DIR / entry["file"], self.spool / entry["file"])
