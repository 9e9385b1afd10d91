"""The papers' grids as Ray param spaces: condition axes x seeds, and the trial naming used by Ray and MLflow.

Every preset trains the papers' model (spectral norm + leaky/GAP) except `table2`, the seed paper's ablation of them;
each preset's help names the table and rows it reproduces. A grid is a union of product grids over the condition
axes arch x l2 x spectral_norm x leaky_gap x epochs (seed paper Table 1 gives ResNet18 and ResNet50 different epoch
budgets, so one `grid_search` runs over whole "condition" dicts), times a `grid_search` over seeds (docs/method.md#trap-ray:
`num_samples` would repeat the whole grid).
A product may also set any other TrialConfig field for its conditions (TMLR 2024 A.1: batch 768 for ResNet50,
128 for LogitNorm and CCT, AdamW + cosine for ConvNeXt; cosine for CCT, with AdamW from its recipe). Every condition is resolved to a full config; what
differs between conditions goes into the condition dicts, the rest is shared. Two different conditions must have
different names (TrialConfig.condition), else their runs would merge: grid_conditions refuses such a grid.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ncood.config import CONDITION_FIELDS, ConfigError, TrialConfig, make_config

# What a condition varies (the seed is separate); etf_projector / entropy_reg: ICML 2025 NC control (docs/method.md#etf-projector).
AXES = ("arch", "l2", "spectral_norm", "leaky_gap", "epochs", "etf_projector", "entropy_reg")
assert set(AXES) <= set(CONDITION_FIELDS), "a grid axis that is not part of the condition name would merge runs"
NAME_PARAMS_KEY = "_name_params"  # param_space key: config fields that also go into run names (search)
NAME_FN_KEY = "_name_fn"  # param_space key: "module:function" naming trials of a non-grid space (NC intervention)


@dataclass(frozen=True)
class GridPreset:
    base: str  # TrialConfig preset (ncood.config.PRESETS) the trials start from
    fixed: Mapping[str, Any]  # overrides of that preset for every trial
    products: tuple[Mapping[str, tuple], ...]  # union of product grids over AXES (+ per-condition fields)
    seeds: int = 15
    help: str = ""
    keep_checkpoint_epochs: tuple[int, ...] = ()  # logged as MLflow artifacts (the NC intervention restarts there)
    checkpoint_every: int = 1  # Ray checkpoint every k epochs and at the end (the ablation's --checkpoint-every default)


_OFF_ON = (False, True)
# The papers' model (seed paper Sec. 3.1: "All models (except those explicitly noted in the ablation study) use
# spectral normalization, leaky ReLUs and Global Average Pooling"; TMLR 2024 App. A.1 the same for every ResNet):
# every preset but table2, which ablates them. The TrialConfig defaults already say so; each preset spells it out
# so that a changed default cannot silently change a paper's grid (tests/test_presets.py pins every resolved config).
_PAPERS_MODEL = {"spectral_norm": True, "sn_coeff": 3.0, "leaky_gap": True}
_CIFAR_OOD = ("svhn", "cifar100", "tinyimagenet")  # seed paper Table 1 / TMLR Tables 2-4 and 8: the OoD test sets


# ---- TMLR 2024 ("Exploring Simple, High Quality OoD Detection with L2 Normalization"), appendix A.1 and Tables 1-7.
# A.1: "All ResNet models use spectral normalization, global average pooling, and Leaky ReLUs" (VGG16, ConvNeXt and
# CCT are not said to: they train without); SGD lr 0.1, LR x0.1 at 40/50 (60 epochs), 75/90 (100), 150/250 (350)
# (the config's default milestones); "a batch size of 1024 was used wherever permitted by GPU RAM, but LogitNorm
# models were trained with a batch size of 128 ... ResNet50 used a batch size of 768 for CIFAR10 and 512 for
# TinyImageNet"; "fifteen randomly initialized models" (ResNet, VGG); CCT: "five random initializations with cosine
# annealing for 300 epochs ... batch sizes of 128", recipe of github.com/SHI-Labs/Compact-Transformers
# (configs/pretrained/cct_7-3x1_cifar10_300epochs.yml: AdamW lr 5.5e-4, weight decay 0.06); ConvNeXt: "a single
# cosine annealing schedule with the AdamW optimizer". OoD sets: each ID set's defaults (ncood.data), which hold
# every OoD column of its table. What A.1 leaves open is ours, said in each preset's help.
_TMLR_FIXED = {"width": 64}
_SN_LG = {"spectral_norm": (True,), "leaky_gap": (True,)}  # A.1: every ResNet
# VGG16, ConvNeXt and CCT: A.1 names SN + leaky/GAP for the ResNets only, and ConvNeXt/CCT cannot take DDU's
# toggles at all; the config defaults are the seed paper's ResNet (both on), so these products switch them off.
_PLAIN = {"spectral_norm": (False,), "leaky_gap": (False,)}
_R50_CIFAR = {"batch_size": (768,)}  # A.1: ResNet50 on CIFAR-10 (and, same image size, our reading for CIFAR-100)
# LogitNorm+ (Table 1; A.1): LogitNorm (T = 0.04, Wei et al. 2022's CIFAR-10 value) + SN + leaky/GAP, batch 128. A.1
# gives no epoch budget: LogitNorm's own recipe, 200 epochs with LR x0.1 at 80 and 140 (github.com/hongxin001/
# logitnorm_ood, train.py l.35, algorithms/base_framework.py l.20).
_LOGITNORM_PLUS = {"arch": ("resnet18",), "l2": (False,), **_SN_LG, "loss": ("logitnorm",), "batch_size": (128,),
                   "epochs": (200,), "lr_steps": ((80, 140),)}
_ADAMW_COSINE = {"optimizer": ("adamw",), "schedule": ("cosine",)}
# CCT-7/3x1: the CCT recipe's AdamW lr / weight decay, 300 epochs, batch 128 (Compact-Transformers
# configs/pretrained/cct_7-3x1_cifar10_300epochs.yml, which TMLR A.1 refers to). Not reproduced from that recipe: 10
# warm-up and 10 cool-down epochs, min lr 1e-5, label smoothing 0.1, RandAugment, Mixup/CutMix, random-resized crops
# (scale 0.8-1, bicubic), its normalization std (ncood trains every model with the papers' crop + flip and CIFAR-10
# statistics).
_CCT = {"arch": ("cct_7_3x1",), **_PLAIN, "l2": _OFF_ON, **_ADAMW_COSINE, "epochs": (300,), "batch_size": (128,),
        "lr": (5.5e-4,), "weight_decay": (0.06,)}
# ConvNeXt: A.1 gives neither epochs nor lr / weight decay: 300 epochs (ConvNeXt's own and CCT's budget) and the
# AdamW defaults of ncood.config.OPTIMIZER_DEFAULTS (ConvNeXt's lr scaled to batch 1024, its weight decay 0.05).
_CONVNEXT = {"arch": ("convnext_tiny",), **_PLAIN, "l2": _OFF_ON, **_ADAMW_COSINE, "epochs": (300,)}
# Table 4: "Bracketed numbers indicate training epochs used for the L2 case". ResNet18 (60) and ResNet18 (350) share
# one No-L2 column (77.8 / 76.6 ...), as do the two ResNet50 rows: a single No-L2 model per architecture, trained
# 350 epochs (the DDU baseline; Table 8 compares 60-epoch models with "NoL2 models trained for the full 350 epochs").
# VGG16 has no bracket: L2 60 epochs (Table 2: "VGG16 and L2 ResNet18 are trained for 60 epochs"); its No-L2
# budget is not given, we read it as the other No-L2 baselines' 350.
_TABLE4 = ({"arch": ("vgg16",), **_PLAIN, "l2": (False,), "epochs": (350,)},
           {"arch": ("vgg16",), **_PLAIN, "l2": (True,), "epochs": (60,)},
           {"arch": ("resnet18",), **_SN_LG, "l2": (False,), "epochs": (350,)},
           {"arch": ("resnet18",), **_SN_LG, "l2": (True,), "epochs": (60, 350)},
           {"arch": ("resnet50",), **_SN_LG, **_R50_CIFAR, "l2": (False,), "epochs": (350,)},
           {"arch": ("resnet50",), **_SN_LG, **_R50_CIFAR, "l2": (True,), "epochs": (100, 350)},
           _CONVNEXT)
TMLR_GRIDS: dict[str, GridPreset] = {
    "tmlr_table1": GridPreset("cifar10", _TMLR_FIXED, (
        {"arch": ("resnet18",), **_SN_LG, "l2": (True,), "epochs": (60,)},
        {"arch": ("resnet50",), **_SN_LG, **_R50_CIFAR, "l2": (True,), "epochs": (100,)},
        _LOGITNORM_PLUS),
        help="TMLR 2024 Table 1, the trained rows: L2 ResNet18 60 epochs, L2 ResNet50 100 epochs (batch 768) vs "
             "LogitNorm+ (ResNet18, LogitNorm T=0.04, batch 128, 200 epochs at LR x0.1 80/140: LogitNorm's recipe, "
             "A.1 gives none), all with SN + leaky/GAP, CIFAR-10, 15 seeds"),
    "tmlr_table4": GridPreset("cifar10", _TMLR_FIXED, _TABLE4,
                              help="TMLR 2024 Table 4 without CCT (see tmlr_table4_cct: 5 seeds): VGG16 (L2 60 / "
                                   "no L2 350 epochs: ncood's choice, the table gives no No-L2 budget), ResNet18 "
                                   "(L2 60 and 350 / no L2 350), ResNet50 (batch 768; L2 100 and 350 / no L2 350), ResNets with SN + leaky/GAP; ConvNeXt-Tiny (CIFAR "
                                   "variant) L2 off/on, AdamW + cosine, 300 epochs (A.1 gives none), CIFAR-10, "
                                   "15 seeds"),
    "tmlr_table4_cct": GridPreset("cifar10", _TMLR_FIXED, (_CCT,), seeds=5,
                                  help="TMLR 2024 Table 4, CCT-7/3x1 rows: L2 off/on, AdamW lr 5.5e-4 wd 0.06 + "
                                       "cosine, 300 epochs, batch 128, CIFAR-10, 5 seeds (a sweep has one seed "
                                       "count, so CCT is its own preset)"),
    "tmlr_gtsrb": GridPreset("cifar10", {**_TMLR_FIXED, "dataset": "gtsrb"}, (
        {"arch": ("resnet18",), **_SN_LG, "l2": _OFF_ON, "epochs": (60,)},),
        help="TMLR 2024 Table 5: ResNet18 with SN + leaky/GAP, L2 off/on, both 60 epochs, GTSRB (resized to "
             "32x32: ncood's choice, the paper gives no size), 15 seeds"),
    "tmlr_tinyimagenet": GridPreset("cifar10", {**_TMLR_FIXED, "dataset": "tinyimagenet"}, (
        {"arch": ("resnet18",), **_SN_LG, "l2": _OFF_ON, "epochs": (60,)},
        {"arch": ("resnet50",), **_SN_LG, "batch_size": (512,), "l2": _OFF_ON, "epochs": (60,)}),
        help="TMLR 2024 Table 6: ResNet18 and ResNet50 (batch 512) with SN + leaky/GAP, L2 off/on, all 60 epochs, "
             "Tiny ImageNet at 32x32 (ncood's choice, the paper gives no size), 15 seeds"),
    "tmlr_cifar100": GridPreset("cifar10", {**_TMLR_FIXED, "dataset": "cifar100"}, (
        {"arch": ("resnet50",), **_SN_LG, **_R50_CIFAR, "l2": (False,), "epochs": (350,)},
        {"arch": ("resnet50",), **_SN_LG, **_R50_CIFAR, "l2": (True,), "epochs": (150,)}),
        help="TMLR 2024 Table 7: no-L2 ResNet50 350 epochs vs L2 ResNet50 150 epochs, SN + leaky/GAP, CIFAR-100, "
             "15 seeds; LR x0.1 at 100/125 for 150 epochs and batch 768 (A.1 gives 768 for CIFAR-10) are ncood's "
             "choices"),
}

GRIDS: dict[str, GridPreset] = {
    # Every epoch gets its NC metrics and accuracy (nc_every 1: the seed paper's point is how early NC sets in), every
    # third epoch the full OoD evaluation (eval_every 3): the (then 13) scores on 3 OoD sets at every epoch made a third of
    # a trial's compute (2.7 of 12.5 s, measured), and the main job must stay under 5 minutes on 2 cores.
    "default": GridPreset("digits", {**_PAPERS_MODEL, "width": 8, "epochs": 15, "batch_size": 128, "eval_every": 3,
                                     "nc_every": 1},
                          ({"arch": ("resnet18",), "l2": _OFF_ON},),
                          help="embedded digits (CPU): the seed paper's Table 1 ResNet18 recipe (SN coeff 3 + leaky/GAP, "
                               "SGD 0.1, L2 off/on) width-reduced: width 8, 15 epochs, batch 128, LR x0.1 at 10/12; "
                               "15 seeds = 30 trials",
                          keep_checkpoint_epochs=(10,),  # tune_jobs/nc_intervention.py --from-epoch 10
                          # a 0.6-s epoch: a Ray checkpoint per full evaluation (a retry re-runs at most 2 epochs)
                          checkpoint_every=3),
    "table1": GridPreset("cifar10", {**_PAPERS_MODEL, "width": 64, "batch_size": 1024, "ood_sets": _CIFAR_OOD},
                         ({"arch": ("resnet18",), "epochs": (60, 350), "l2": _OFF_ON},
                          {"arch": ("resnet50",), "epochs": (100, 350), "l2": _OFF_ON}),
                         help="seed paper Table 1 (CIFAR-10 vs SVHN/CIFAR-100/Tiny ImageNet, SN + leaky/GAP, batch "
                              "1024): ResNet18 No L2 350 / No L2 60 / L2 60 and ResNet50 No L2 350 / No L2 100 / L2 100, "
                              "LR x0.1 at 150/250 (350), 40/50 (60), 75/90 (100); also L2 350 of both (TMLR Table 4 has L2 350 rows; its ResNet50 used batch 768, see tmlr_table4); "
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
    **TMLR_GRIDS,
    # Fashion-MNIST, the real-image set that exists offline (ncood.data.fashion_mnist). Both presets write the
    # papers' architecture switches out: seed paper Sec. 3.1, "All models ... use spectral normalization, leaky
    # ReLUs and Global Average Pooling".
    "fmnist": GridPreset("fmnist", {**_PAPERS_MODEL, "width": 64, "arch": "resnet18", "epochs": 60,
                                    "batch_size": 1024},
                         ({"l2": _OFF_ON},),
                         help="Fashion-MNIST with the seed paper's ResNet18 recipe (Sec. 3.1 and the Table 1 60-epoch "
                              "rows: SN + leaky/GAP, width 64, 60 epochs, LR x0.1 at 40/50, batch 1024, all 54k "
                              "train images), L2 off/on x 15 seeds = 30 trials (GPU)",
                         keep_checkpoint_epochs=(50,)),  # as table1: tune_jobs/nc_intervention.py --from-epoch 50
    # Sized for 3 seeds x L2 off/on on 2 CPU cores (two 1-core trials at a time, three rounds): an epoch takes ~16 s
    # and the final evaluation of all (then 13) scores on 5 OoD sets ~1 min, so 20 epochs took ~23 min in all; 15 took 16 min
    # 25 s (fresh clone, 2 cores, 2026-11-30). Width 8 on a 10k-image subset reaches 86-89% test accuracy in 15
    # epochs (88% in 20); batch 128 gives 79 steps per epoch (1024 would give 10); one full evaluation (NC + GMM + every
    # score, every OoD set) at the end.
    "fmnist_cpu": GridPreset("fmnist", {**_PAPERS_MODEL, "width": 8, "arch": "resnet18", "epochs": 15,
                                        "train_subset": 10000, "batch_size": 128, "eval_every": 0},
                             ({"l2": _OFF_ON},), seeds=3,
                             help="Fashion-MNIST on 2 CPU cores: the fmnist recipe (seed paper Table 1 ResNet18 rows) (SN + leaky/GAP) at width 8, "
                                  "15 epochs (LR x0.1 at 10/12), batch 128, a stratified 10k-image train subset, one evaluation at "
                                  "the end, L2 off/on x 3 seeds = 6 trials (~16 min on 2 CPU cores)"),
}


def grid_conditions(preset: str, overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(the config fields shared by every trial, the list of condition dicts). An override of an axis field (a
    value or a list of values) replaces that axis in every product; any other field is fixed for all trials, also
    where a product sets it (flags override the preset). Condition dicts hold every axis, the product's own fields
    and every resolved field that differs between conditions (e.g. lr after optimizer=adamw)."""
    if preset not in GRIDS:
        raise ConfigError(f"unknown grid preset '{preset}'; choose one of {sorted(GRIDS)}")
    grid, overrides = GRIDS[preset], dict(overrides or {})
    if "seed" in overrides:
        raise ConfigError("seed: seeds are a grid axis; use --seeds N")
    axis_over = {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in overrides.items() if k in AXES}
    user_fixed = {k: v for k, v in overrides.items() if k not in AXES}
    fixed = {**grid.fixed, **user_fixed}
    base = make_config(grid.base, **fixed).to_dict()  # validates the shared fields once, on the driver
    resolved: list[dict] = []  # full configs, one per condition, in grid order (fail here, not in 30 Ray workers)
    own: set[str] = set(AXES)  # fields a product sets: always in the condition dicts
    for product in grid.products:
        extra = [k for k in product if k not in AXES]
        own.update(extra)
        values = [axis_over.get(a) or product.get(a) or (base[a],) for a in AXES]
        values += [(user_fixed[k],) if k in user_fixed else product[k] for k in extra]
        for combo in itertools.product(*values):
            full = make_config(grid.base, **{**fixed, **dict(zip((*AXES, *extra), combo))}).to_dict()
            if full not in resolved:  # e.g. table1 with --epochs 2: both products collapse
                resolved.append(full)
    varying = {k for k in base if k != "seed" and len({repr(f[k]) for f in resolved}) > 1}
    keep = [k for k in base if k in own or k in varying]
    conditions = [{k: full[k] for k in keep} for full in resolved]
    _check_distinct_names(preset, resolved, keep)
    return {k: v for k, v in resolved[0].items() if k not in keep and k != "seed"}, conditions


def _check_distinct_names(preset: str, resolved: Sequence[dict], fields: Sequence[str]) -> None:
    """Two different conditions with one name would be merged by MLflow tags, resume and aggregation."""
    seen: dict[str, dict] = {}
    for full in resolved:
        name = TrialConfig.from_dict(full).condition
        if name in seen:
            differ = sorted(k for k in fields if seen[name][k] != full[k])
            raise ConfigError(f"grid preset '{preset}': two conditions are both named '{name}'; they differ only in "
                              f"{differ}, which the condition name (ncood.config.CONDITION_FIELDS) does not show")
        seen[name] = full


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
