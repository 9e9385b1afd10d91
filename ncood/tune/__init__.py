"""Ray Tune for ncood: the papers' grids, the resumable MLflow-logged trial, and the sweep runner.

    grid.py    condition axes x seeds as a Ray param_space (presets default / table1 / table2)
    trial.py   the function trainable (per-epoch MLflow batch + tune.report with checkpoint)
    sweep.py   Ray start-up, MLflow parent run, Tuner / Tuner.restore, run-status sweep
    jobs.py    flags and end-of-sweep summary shared by tune_jobs/ablation.py and tune_jobs/search.py

Jobs only assemble these (STYLE.md 8): `python tune_jobs/ablation.py --help`.
"""
from ncood.tune.grid import AXES, GRIDS, GridPreset, config_from_tune, grid_conditions, make_param_space, run_name
from ncood.tune.sweep import SweepResult, SweepSettings, SweepStatusCallback, init_ray, run_grid, run_sweep
from ncood.tune.trial import TrialRuntime, train_trial

__all__ = [
    "AXES", "GRIDS", "GridPreset", "SweepResult", "SweepSettings", "SweepStatusCallback", "TrialRuntime",
    "config_from_tune", "grid_conditions", "init_ray", "make_param_space", "run_grid", "run_name", "run_sweep",
    "train_trial",
]
