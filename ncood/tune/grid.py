"""The papers' grids as Ray param spaces: condition axes x seeds, and the trial naming used by Ray and MLflow.

A grid is a union of product grids over the condition axes arch x l2 x spectral_norm x leaky_gap x epochs (seed
paper Table 1 gives ResNet18 and ResNet50 different epoch budgets, so one `grid_search` runs over whole
"condition" dicts), times a `grid_search` over seeds (REFERENCE.md 7: `num_samples` would repeat the whole grid).
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ray import tune

from ncood.config import CONDITION_FIELDS, ConfigError, TrialConfig, make_config

# What a condition varies (the seed is separate); etf_projector / entropy_reg: ICML 2025 NC control (REFERENCE.md 2).
AXES = ("arch", "l2", "spectral_norm", "leaky_gap", "epochs", "etf_projector", "entropy_reg")
assert set(AXES) <= set(CONDITION_FIELDS), "a grid axis that is not part of the condition name would merge runs"
NAME_PARAMS_KEY = "_name_params"  # param_space key: config fields that also go into run names (search)
NAME_FN_KEY = "_name_fn"  # param_space key: "module:function" naming trials of a non-grid space (NC intervention)


@dataclass(frozen=True)
class GridPreset:
    base: str  # TrialConfig preset (ncood.config.PRESETS) the trials start from
    fixed: Mapping[str, Any]  # overrides of that preset for every trial
    products: tuple[Mapping[str, tuple], ...]  # union of product grids over AXES
    seeds: int = 15
    help: str = ""
    keep_checkpoint_epochs: tuple[int, ...] = ()  # logged as MLflow artifacts (the NC intervention restarts there)


_OFF_ON = (False, True)
GRIDS: dict[str, GridPreset] = {
    # eval_every 1: a digits evaluation costs less than an epoch, and every epoch gets its NC/OoD metrics.
    "default": GridPreset("digits", {"width": 8, "epochs": 15, "eval_every": 1},
                          ({"arch": ("resnet18",), "l2": _OFF_ON},),
                          help="embedded digits, width-8 ResNet18, 15 epochs, L2 off/on x 15 seeds = 30 trials (CPU)",
                          keep_checkpoint_epochs=(10,)),  # tune_jobs/nc_intervention.py --from-epoch 10
    "table1": GridPreset("cifar10", {"width": 64, "ood_sets": ("svhn", "cifar100", "tinyimagenet")},
                         ({"arch": ("resnet18",), "epochs": (60, 350), "l2": _OFF_ON},
                          {"arch": ("resnet50",), "epochs": (100, 350), "l2": _OFF_ON}),
                         help="seed paper Table 1: ResNet18 60/350 and ResNet50 100/350 epochs, L2 off/on, CIFAR-10",
                         keep_checkpoint_epochs=(50,)),  # seed paper Sec. 4.2: the NC intervention starts at 50
    "table2": GridPreset("cifar10", {"width": 64, "arch": "resnet18", "epochs": 60},
                         ({"spectral_norm": _OFF_ON, "leaky_gap": _OFF_ON, "l2": _OFF_ON},),
                         help="seed paper Table 2: ResNet18 60 epochs, spectral norm x leaky/GAP x L2 (8 conditions)"),
    "nc_control": GridPreset("cifar10", {"width": 64, "arch": "resnet18", "epochs": 60, "l2": False},
                             ({"etf_projector": _OFF_ON, "entropy_reg": (0.0, 0.05)},),
                             help="ICML 2025 NC control on the Table 2 setting: fixed simplex-ETF projector off/on x "
                                  "entropy regularizer 0/0.05 (4 conditions), ResNet18 60 epochs, CIFAR-10"),
    # Fashion-MNIST, the real-image set that exists offline (ncood.data.fashion_mnist). Both presets write the
    # papers' architecture switches out: seed paper Sec. 3.1, "All models ... use spectral normalization, leaky
    # ReLUs and Global Average Pooling".
    "fmnist": GridPreset("fmnist", {"width": 64, "arch": "resnet18", "epochs": 60, "spectral_norm": True,
                                    "leaky_gap": True},
                         ({"l2": _OFF_ON},),
                         help="Fashion-MNIST with the seed paper's ResNet18 recipe (Sec. 3.1 and the Table 1 60-epoch "
                              "rows: SN + leaky/GAP, width 64, 60 epochs, LR x0.1 at 40/50, batch 1024, all 54k "
                              "train images), L2 off/on x 15 seeds = 30 trials (GPU)",
                         keep_checkpoint_epochs=(50,)),  # as table1: tune_jobs/nc_intervention.py --from-epoch 50
    # Sized to finish 3 seeds x L2 off/on in under 20 minutes on 2 CPU cores (two 1-core trials at a time, three
    # rounds; measured on 2 quiet cores: ~12.5 s per epoch, ~28 s for the evaluation): width 8 on a 10k-image
    # subset reaches 84-87% test accuracy in 15 epochs and 88% in 20 (L2 on, seeds 0 and 2); batch 128 gives 79
    # steps per epoch (1024 would give 10); one full evaluation (NC + GMM + every score, every OoD set) at the end.
    "fmnist_cpu": GridPreset("fmnist", {"width": 8, "arch": "resnet18", "epochs": 20, "spectral_norm": True,
                                        "leaky_gap": True, "train_subset": 10000, "batch_size": 128,
                                        "eval_every": 0},
                             ({"l2": _OFF_ON},), seeds=3,
                             help="Fashion-MNIST on 2 CPU cores: the fmnist recipe (SN + leaky/GAP) at width 8, "
                                  "20 epochs, batch 128, a stratified 10k-image train subset, one evaluation at "
                                  "the end, L2 off/on x 3 seeds = 6 trials (< 20 min)"),
}


def grid_conditions(preset: str, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(the config fields shared by every trial, the list of condition dicts). An override of an axis field (a
    value or a list of values) replaces that axis in every product; any other field is fixed for all trials."""
    if preset not in GRIDS:
        raise ConfigError(f"unknown grid preset '{preset}'; choose one of {sorted(GRIDS)}")
    grid, overrides = GRIDS[preset], dict(overrides or {})
    if "seed" in overrides:
        raise ConfigError("seed: seeds are a grid axis; use --seeds N")
    axis_over = {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in overrides.items() if k in AXES}
    fixed = {**grid.fixed, **{k: v for k, v in overrides.items() if k not in AXES}}
    base = make_config(grid.base, **fixed).to_dict()  # validates the shared fields once, on the driver
    conditions: list[dict] = []
    for product in grid.products:
        values = [axis_over.get(a) or product.get(a) or (base[a],) for a in AXES]
        for combo in itertools.product(*values):
            cond = dict(zip(AXES, combo))
            if cond not in conditions:  # e.g. table1 with --epochs 2: both products collapse
                TrialConfig.from_dict({**base, **cond})  # fail here, not in 30 Ray workers
                conditions.append(cond)
    return {k: v for k, v in base.items() if k not in AXES and k != "seed"}, conditions


def make_param_space(preset: str = "default", overrides: Mapping[str, Any] | None = None,
                     seeds: int | Sequence[int] | None = None) -> dict[str, Any]:
    """Ray param_space: shared fields + grid_search over condition dicts + grid_search over seeds."""
    shared, conditions = grid_conditions(preset, overrides)
    seeds = GRIDS[preset].seeds if seeds is None else seeds
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError("seeds: need at least one seed")
    return {**shared, "condition": tune.grid_search(conditions), "seed": tune.grid_search(seed_list)}


def config_from_tune(config: Mapping[str, Any]) -> TrialConfig:
    """Ray's resolved config -> TrialConfig ('_'-prefixed keys are test/runtime hooks, not config fields)."""
    fields = {k: v for k, v in config.items() if not k.startswith("_") and k != "condition"}
    return TrialConfig.from_dict({**fields, **dict(config.get("condition") or {})})


def run_name(config: Mapping[str, Any]) -> str:
    """'<condition>-s<seed>' (MLflow run name = Ray trial name); a search appends its sampled values."""
    if config.get(NAME_FN_KEY):
        module, _, attr = config[NAME_FN_KEY].partition(":")
        return getattr(importlib.import_module(module), attr)(config)
    cfg = config_from_tune(config)
    short = {"lr": "lr", "weight_decay": "wd", "batch_size": "bs"}
    extra = "".join(f"-{short.get(p, p)}{getattr(cfg, p):.3g}" for p in config.get(NAME_PARAMS_KEY, ()))
    return f"{cfg.condition}-s{cfg.seed}{extra}"


def trial_dirname(trial) -> str:
    return f"{run_name(trial.config)}_{trial.trial_id}"


def trial_name(trial) -> str:
    return run_name(trial.config)
