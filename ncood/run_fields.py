"""The standard MLflow fields of a run, filled the way MLflow's own fluent API fills them: dataset inputs, context
tags, system metrics. ncood.tracking uses only MlflowClient (see its docstring), which fills none of these by itself.

- Context tags: `mlflow.tracking.context.registry.resolve_tags`, what `mlflow.start_run` sets (mlflow.source.name,
  mlflow.source.type, mlflow.user, mlflow.source.git.commit/branch/repoURL when the source is in a git checkout).
  Resolved once on the driver (the script the user started), then copied to every trial run: inside a Ray worker
  the "source" would be Ray's worker script.
- Dataset inputs: one `mlflow.entities.DatasetInput` per set a trial reads (train, val, test with contexts
  `train`/`validation`/`test`, and each OoD set with context `ood`), as `mlflow.log_input` records them: name, a
  digest of the data, source (the registered dataset and the data root), schema and profile. The digest is
  sha256 over the shape, dtype and at most 1024 evenly spaced samples (and their labels): cheap on a 50k-image set,
  and it changes with the data, its split or its preprocessing. Trials starting together register the same
  datasets at once: log_dataset_inputs tries again when MLflow's store reports that race.
- System metrics: MLflow's SystemMetricsMonitor (system/cpu_utilization_percentage, system/system_memory_usage_megabytes,
  disk, network, GPU when present) on a trial run, when psutil is installed. Sampling every 30 s (MLflow's default
  is 10 s): one psutil sample and one log_batch per interval, negligible next to a trial even on 2 cores;
  MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it. A last sample is logged when the run ends.
- The process-wide tracking URI, which some MLflow calls read whatever client called them (`process_tracking_uri`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import time
from typing import Any, Iterator, Mapping

import mlflow
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

SYSTEM_METRICS_INTERVAL_S = 30.0
DATASET_RACE_ATTEMPTS = 5  # log_dataset_inputs: tries when concurrent trials register the same datasets
DIGEST_SAMPLES = 1024  # samples hashed per set
SOURCE_TYPE = "ncood"  # mlflow.data source type: a set of ncood's dataset registry (ncood.data)
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def context_tags() -> dict[str, str]:
    """The tags `mlflow.start_run` would set for this process (source, user, git), via MLflow's context registry."""
    from mlflow.tracking.context.registry import resolve_tags

    return {k: str(v) for k, v in resolve_tags().items()}


def digest(x: Any, y: Any = None) -> str:
    """sha256 (first 16 hex) of the shape, dtype and DIGEST_SAMPLES evenly spaced rows of x (a tensor or array) and y."""
    h = hashlib.sha256()
    for arr in (x, y):
        if arr is None:
            continue
        a = arr.detach().cpu() if hasattr(arr, "detach") else np.asarray(arr)
        h.update(f"{tuple(a.shape)}{a.dtype}".encode())
        if len(a):
            idx = np.unique(np.linspace(0, len(a) - 1, min(len(a), DIGEST_SAMPLES)).astype(np.int64))
            rows = a[idx]
            h.update(np.ascontiguousarray(rows.numpy() if hasattr(rows, "numpy") else rows).tobytes())
    return h.hexdigest()[:16]


def _dataset_input(name: str, context: str, x: Any, y: Any, source: Mapping[str, str]) -> DatasetInput:
    shape = [int(s) for s in x.shape]
    schema = {"images": {"shape": shape[1:], "dtype": str(x.dtype).replace("torch.", "")},
              **({"labels": {"dtype": str(y.dtype).replace("torch.", "")}} if y is not None else {})}
    profile = {"num_rows": shape[0], **({"num_classes": int(y.max()) + 1} if y is not None and len(y) else {})}
    ds = Dataset(name=name, digest=digest(x, y), source_type=SOURCE_TYPE, source=json.dumps(dict(source)),
                 schema=json.dumps(schema), profile=json.dumps(profile))
    return DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def dataset_inputs(cfg: Any, data: Any, ood_sets: Mapping[str, Any]) -> list[DatasetInput]:
    """cfg: TrialConfig; data: ncood.data.IDData (train/val/test splits); ood_sets: name -> images (N, C, H, W).
    Names are `<dataset>-<split>` and `<ood set>`; source: the registry name, split and data root."""
    base = {"dataset": cfg.dataset, "data_root": str(cfg.data_root)}
    out = [_dataset_input(f"{cfg.dataset}-{split}", context, getattr(data, split).x, getattr(data, split).y,
                          {**base, "split": split})
           for split, context in (("train", "train"), ("val", "validation"), ("test", "test"))
           if len(getattr(data, split))]
    out += [_dataset_input(name, "ood", x, None, {"dataset": name, "data_root": str(cfg.data_root),
                                                   "like": cfg.dataset})
            for name, x in ood_sets.items()]
    return out


def log_dataset_inputs(client: Any, run_id: str, cfg: Any, data: Any, ood_sets: Mapping[str, Any]) -> None:
    """client.log_inputs(run_id, dataset_inputs(...)), again when another run of the experiment registered the same
    datasets at the same moment.

    MLflow's SQL store looks the experiment's datasets up by (name, digest), inserts the missing ones and links them
    to the run, in one transaction. Two trials starting together (every sweep's first round: same data, same digests)
    can both miss, and the later insert fails on the datasets table's unique key ("UNIQUE constraint failed:
    datasets..." on sqlite, "duplicate key value ..." on PostgreSQL, also through a tracking server). Its
    transaction is rolled back, so the next attempt finds the rows and only links them. Seen in a 2-trial sweep on
    2 busy cores, and in 2 of 3 tries with 6 threads at once (sqlite)."""
    inputs = dataset_inputs(cfg, data, ood_sets)
    for attempt in range(DATASET_RACE_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            message = str(e)
            race = ("UNIQUE constraint failed: datasets." in message
                    or ("duplicate key value" in message and "dataset" in message))
            if not race or attempt == DATASET_RACE_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def start_system_metrics(run_id: str, tracking_uri: str, resume: bool):
    """MLflow's SystemMetricsMonitor on `run_id` (None without psutil); stop it with `.finish()`. Its INFO lines
    (started / stopping) are silenced: a sweep's console shows Ray's table, not one line per trial."""
    if importlib.util.find_spec("psutil") is None:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume,
                                   tracking_uri=tracking_uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop the monitor, then log one last sample: a trial shorter than the sampling interval still gets one (the
    monitor publishes only after a full interval), and every run ends with its final state."""
    monitor.finish()
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())
    monitor.mlflow_logger.flush()


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's Model.log and the sqlite registry's create_model_version resolve a client from the process-wide
    tracking URI, whatever client called them: point it at `uri` for this block only (no progress bars either).

    Restores both the global and the MLFLOW_TRACKING_URI variable: MLflow's own `_use_tracking_uri` deletes the
    variable on exit when no global was set, which would cut a Ray worker off its configured store."""
    from mlflow.tracking._tracking_service import utils

    saved_env = {k: os.environ.get(k) for k in (TRACKING_URI_ENV, PROGRESS_BAR_ENV)}
    saved_global = utils._tracking_uri
    os.environ[PROGRESS_BAR_ENV] = "false"
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_global)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
