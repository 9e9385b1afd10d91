"""The papers' grids as Ray param spaces: condition axes x seeds, and the trial naming used by Ray and MLflow.

Every preset trains the papers' model (spectral norm + leaky/GAP) except `table2`, the seed paper's ablation of them;
each preset's help names the table and rows it reproduces. A grid is a union of product grids over the condition
axes arch x l2 x spectral_norm x leaky_gap x epochs (seed paper Table 1 gives ResNet18 and ResNet50 different epoch
budgets, so one `grid_search` runs over whole "condition" dicts), times a `grid_search` over seeds (REFERENCE.md 7:
`num_samples` would repeat the whole grid).
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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
# The papers' model (seed paper Sec. 3.1: "All models (except those explicitly noted in the ablation study) use
# spectral normalization, leaky ReLUs and Global Average Pooling"; TMLR 2024 App. A.1 the same for every ResNet):
# every preset but table2, which ablates them. The TrialConfig defaults already say so; each preset spells it out
# so that a changed default cannot silently change a paper's grid (tests/test_presets.py pins every resolved config).
_PAPERS_MODEL = {"spectral_norm": True, "sn_coeff": 3.0, "leaky_gap": True}
_CIFAR_OOD = ("svhn", "cifar100", "tinyimagenet")  # seed paper Table 1 / TMLR Tables 2-4 and 8: the OoD test sets
GRIDS: dict[str, GridPreset] = {
    # eval_every 1: a digits evaluation costs less than an epoch, and every epoch gets its NC/OoD metrics.
    "default": GridPreset("digits", {**_PAPERS_MODEL, "width": 8, "epochs": 15, "batch_size": 128, "eval_every": 1},
                          ({"arch": ("resnet18",), "l2": _OFF_ON},),
                          help="embedded digits (CPU): the seed paper's Table 1 ResNet18 recipe (SN coeff 3 + leaky/GAP, "
                               "SGD 0.1, L2 off/on) width-reduced: width 8, 15 epochs, batch 128, LR x0.1 at 10/12; "
                               "15 seeds = 30 trials",
                          keep_checkpoint_epochs=(10,)),  # tune_jobs/nc_intervention.py --from-epoch 10
    "table1": GridPreset("cifar10", {**_PAPERS_MODEL, "width": 64, "batch_size": 1024, "ood_sets": _CIFAR_OOD},
                         ({"arch": ("resnet18",), "epochs": (60, 350), "l2": _OFF_ON},
                          {"arch": ("resnet50",), "epochs": (100, 350), "l2": _OFF_ON}),
                         help="seed paper Table 1 (CIFAR-10 vs SVHN/CIFAR-100/Tiny ImageNet, SN + leaky/GAP, batch "
                              "1024): ResNet18 No L2 350 / No L2 60 / L2 60 and ResNet50 No L2 350 / No L2 100 / L2 100, "
                              "LR x0.1 at 150/250 (350), 40/50 (60), 75/90 (100); also L2 350 of both (TMLR Table 4); "
                              "15 seeds = 120 trials",
                         keep_checkpoint_epochs=(50,)),  # seed paper Sec. 4.2: the NC intervention starts at 50
    "table2": GridPreset("cifar10", {"width": 64, "sn_coeff": 3.0, "arch": "resnet18", "epochs": 60, "batch_size": 1024},
                         ({"spectral_norm": _OFF_ON, "leaky_gap": _OFF_ON, "l2": _OFF_ON},),
                         help="seed paper Tables 2 and 3 (the ablation: the only preset with SN and leaky/GAP off): "
                              "ResNet18, CIFAR-10 vs SVHN, 60 epochs, batch 1024, LR x0.1 at 40/50, spectral norm x "
                              "leaky/GAP x L2 = all 8 rows; 15 seeds = 120 trials"),
    "nc_control": GridPreset("cifar10", {**_PAPERS_MODEL, "width": 64, "arch": "resnet18", "epochs": 60,
                                         "batch_size": 1024, "l2": False, "label_smoothing": 0.1},
                             ({"etf_projector": _OFF_ON, "entropy_reg": (0.0, 0.05)},),
                             help="ICML 2025 NC control (fixed simplex-ETF projector off/on x entropy regularizer 0/0.05, "
                                  "label smoothing 0.1 as its code) on the seed paper's Table 1 'No L2 60' model: ResNet18 "
                                  "SN + leaky/GAP, CIFAR-10, 60 epochs, batch 1024, LR x0.1 at 40/50; 4 conditions x 15 "
                                  "seeds (the ICML paper's own ImageNet-100 recipe is not reproduced)"),
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
    from ray import tune  # here, not at import: listing a grid (--dry-run, --help) needs no Ray

    shared, conditions = grid_conditions(preset, overrides)
    return {**shared, "condition": tune.grid_search(conditions), "seed": tune.grid_search(seed_list(preset, seeds))}


def seed_list(preset: str, seeds: int | Sequence[int] | None = None) -> list[int]:
    """The seeds of a grid: the preset's count (15, as the papers) unless `seeds` (a count N: 0..N-1, or a list)."""
    seeds = GRIDS[preset].seeds if seeds is None else seeds
    out = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not out:
        raise ConfigError("seeds: need at least one seed")
    return out


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
