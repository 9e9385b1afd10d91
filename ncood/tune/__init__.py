"""Ray Tune for ncood: the papers' grids, the resumable MLflow-logged trial, and the sweep runner.

    grid.py    condition axes x seeds as a Ray param_space (presets default / table1 / table2 / nc_control)
    trainable.py  what every trainable shares: runtime, start (threads, device), failure handling, memory
    trial.py   the function trainable (per-epoch MLflow batch + tune.report with checkpoint)
    intervention.py  the NC intervention's continuation trainable and its sweep
    sweep.py   Ray start-up, MLflow parent run, Tuner / Tuner.restore, run-status sweep
    jobs.py    flags and end-of-sweep summary shared by tune_jobs/ablation.py and tune_jobs/search.py

Jobs only assemble these (docs/architecture.md#dependencies): `python tune_jobs/ablation.py --help`. The names below load their module on
first use (PEP 562): `--dry-run` and `--help` list a grid without importing Ray or MLflow.
"""
from __future__ import annotations

from ncood.lazy import lazy_getattr

_EXPORTS = {
    "AXES": "grid", "GRIDS": "grid", "GridPreset": "grid", "config_from_tune": "grid", "grid_conditions": "grid",
    "make_param_space": "grid", "run_name": "grid",
    "SweepResult": "sweep", "SweepSettings": "sweep", "SweepSpec": "sweep", "SweepStatusCallback": "sweep",
    "init_ray": "sweep", "run_grid": "sweep", "run_sweep": "sweep",
    "TrialRuntime": "trainable", "train_trial": "trial",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())  # PEP 562: ncood.lazy


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
