"""The TMLR 2024 grid presets resolve to the settings of their tables, and the grid machinery they need.

Paper: "Exploring Simple, High Quality Out-of-Distribution Detection with L2 Normalization" (Haas, Yolland, Rabus,
TMLR 2/2024). Each expected row below cites the sentence it comes from (A.1 = appendix A.1, "Training Details");
rows marked OURS are settings the paper leaves open (the preset's help and ncood/tune/grid.py say so).
"""
from __future__ import annotations

import pytest

from ncood.config import ConfigError, TrialConfig
from ncood.tune import grid_conditions, make_param_space
from ncood.tune.grid import GRIDS, GridPreset

SN_LG = dict(spectral_norm=True, leaky_gap=True)  # A.1: "All ResNet models use spectral normalization, global
NO_DDU = dict(spectral_norm=False, leaky_gap=False)  # average pooling, and Leaky ReLUs" (VGG/ConvNeXt/CCT: not said)
SGD = dict(optimizer="sgd", schedule="step", lr=0.1, loss="ce", bn_groups=1, precision="fp32")  # A.1: "SGD optimizer
# initialized to ... 1e-1"; fp32 (V100s, the seed paper); BatchNorm over the whole batch (docs/method.md#bn-groups)
ADAMW_COS = dict(optimizer="adamw", schedule="cosine", loss="ce", bn_groups=1, precision="fp32")  # A.1: ConvNeXt "cosine annealing ... AdamW"

# preset -> (dataset, seeds, [expected condition rows]); milestones are the LR x0.1 epochs of the step schedule
EXPECTED = {
    "tmlr_table1": ("cifar10", 15, [
        # Table 1 "L2 Norm 60 ResNet18"; A.1 "stepdowns at 40 and 50 epochs for 60 epoch models"; "batch size of 1024"
        dict(arch="resnet18", l2=True, epochs=60, batch_size=1024, milestones=(40, 50), **SN_LG, **SGD),
        # Table 1 "L2 Norm 100 ResNet50"; A.1 "75 and 90 epochs for 100 epoch models"; "ResNet50 ... 768 for CIFAR10"
        dict(arch="resnet50", l2=True, epochs=100, batch_size=768, milestones=(75, 90), **SN_LG, **SGD),
        # Table 1 "LogitNorm+ ResNet18"; A.1 "We apply these strategies [SN, GAP, leaky] to LogitNorm" and "LogitNorm
        # models were trained with a batch size of 128"; epochs 200 at 80/140 and T 0.04: OURS (Wei et al.'s recipe)
        dict(arch="resnet18", l2=False, epochs=200, batch_size=128, milestones=(80, 140), **SN_LG,
             **{**SGD, "loss": "logitnorm"}, logitnorm_temperature=0.04),
    ]),
    "tmlr_table4": ("cifar10", 15, [
        # Table 4 "VGG16": Table 2 caption "VGG16 and L2 ResNet18 are trained for 60 epochs"; no-L2 350: OURS
        dict(arch="vgg16", l2=True, epochs=60, batch_size=1024, milestones=(40, 50), **NO_DDU, **SGD),
        dict(arch="vgg16", l2=False, epochs=350, batch_size=1024, milestones=(150, 250), **NO_DDU, **SGD),
        # Table 4 "ResNet18 (60)", "ResNet18 (350)": "Bracketed numbers indicate training epochs used for the L2
        # case"; both rows share one No-L2 column -> one no-L2 model, 350 epochs (A.1 "150 and 250 ... 350")
        dict(arch="resnet18", l2=True, epochs=60, batch_size=1024, milestones=(40, 50), **SN_LG, **SGD),
        dict(arch="resnet18", l2=True, epochs=350, batch_size=1024, milestones=(150, 250), **SN_LG, **SGD),
        dict(arch="resnet18", l2=False, epochs=350, batch_size=1024, milestones=(150, 250), **SN_LG, **SGD),
        # Table 4 "ResNet50 (100)", "ResNet50 (350)"; A.1 "ResNet50 used a batch size of 768 for CIFAR10"
        dict(arch="resnet50", l2=True, epochs=100, batch_size=768, milestones=(75, 90), **SN_LG, **SGD),
        dict(arch="resnet50", l2=True, epochs=350, batch_size=768, milestones=(150, 250), **SN_LG, **SGD),
        dict(arch="resnet50", l2=False, epochs=350, batch_size=768, milestones=(150, 250), **SN_LG, **SGD),
        # Table 4 "ConvNeXt_Tiny*"; A.1 "single cosine annealing schedule with the AdamW optimizer"; "batch size of
        # 1024 ... wherever permitted"; 300 epochs and lr 1e-3 / weight decay 0.05: OURS
        dict(arch="convnext_tiny", l2=True, epochs=300, batch_size=1024, lr=1e-3, weight_decay=0.05, **NO_DDU,
             **ADAMW_COS),
        dict(arch="convnext_tiny", l2=False, epochs=300, batch_size=1024, lr=1e-3, weight_decay=0.05, **NO_DDU,
             **ADAMW_COS),
    ]),
    # Table 4 "CCT_7_3x1"; A.1 "trained from five random initializations with cosine annealing for 300 epochs ... with
    # batch sizes of 128"; AdamW lr 5.5e-4 / wd 0.06 from the CCT repo's cct_7-3x1_cifar10_300epochs.yml, which A.1
    # points to for "the training regime"
    "tmlr_table4_cct": ("cifar10", 5, [
        dict(arch="cct_7_3x1", l2=l2, epochs=300, batch_size=128, lr=5.5e-4, weight_decay=0.06, **NO_DDU,
             **ADAMW_COS) for l2 in (False, True)]),
    # Table 5 caption "L2 vs NoL2 ResNet18 models, when both are trained on the German Traffic Sign Recognition
    # Benchmark (GTSRB) for 60 epochs"; 15 seeds: OURS (A.1 says fifteen for CIFAR-10 ResNets)
    "tmlr_gtsrb": ("gtsrb", 15, [
        dict(arch="resnet18", l2=l2, epochs=60, batch_size=1024, milestones=(40, 50), **SN_LG, **SGD)
        for l2 in (False, True)]),
    # Table 6: ResNet18 and ResNet50 rows, caption "trained on TinyImageNet for 60 epochs"; A.1 "ResNet50 used a batch
    # size of ... 512 for TinyImageNet"
    "tmlr_tinyimagenet": ("tinyimagenet", 15, [
        dict(arch=arch, l2=l2, epochs=60, batch_size=bs, milestones=(40, 50), **SN_LG, **SGD)
        for arch, bs in (("resnet18", 1024), ("resnet50", 512)) for l2 in (False, True)]),
    # Table 7 caption "results for CIFAR100 on NoL2 ResNet50 350 and L2 ResNet50 150 models"; 768 (A.1's CIFAR-10
    # ResNet50 batch, same image size) and the 150-epoch milestones 100/125 (2/3, 5/6): OURS
    "tmlr_cifar100": ("cifar100", 15, [
        dict(arch="resnet50", l2=False, epochs=350, batch_size=768, milestones=(150, 250), **SN_LG, **SGD),
        dict(arch="resnet50", l2=True, epochs=150, batch_size=768, milestones=(100, 125), **SN_LG, **SGD),
    ]),
}
TABLE_OOD = {  # every OoD column of the table is evaluated (the ID set's default OoD sets; Tables 1, 4-7)
    "cifar10": {"svhn", "cifar100", "tinyimagenet"}, "gtsrb": {"svhn", "cifar100", "tinyimagenet"},
    "tinyimagenet": {"svhn", "cifar100"}, "cifar100": {"svhn", "cifar10", "tinyimagenet"},
}
HELP_NAMES = {"tmlr_table1": "Table 1", "tmlr_table4": "Table 4", "tmlr_table4_cct": "Table 4",
              "tmlr_gtsrb": "Table 5", "tmlr_tinyimagenet": "Table 6", "tmlr_cifar100": "Table 7"}


def resolved(preset: str, overrides: dict | None = None) -> list[TrialConfig]:
    shared, conditions = grid_conditions(preset, overrides)
    return [TrialConfig.from_dict({**shared, **c, "seed": 0}) for c in conditions]


def test_every_tmlr_preset_is_pinned():
    assert {p for p in GRIDS if p.startswith("tmlr")} == set(EXPECTED)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_preset_resolves_to_its_table(preset):
    dataset, seeds, rows = EXPECTED[preset]
    configs = resolved(preset)
    assert len(configs) == len(rows) and len({c.condition for c in configs}) == len(rows)
    assert GRIDS[preset].seeds == seeds and HELP_NAMES[preset] in GRIDS[preset].help
    for row in rows:
        matches = [c for c in configs if all(
            (c.milestones if k == "milestones" else getattr(c, k)) == v for k, v in row.items())]
        assert len(matches) == 1, (preset, row, [c.condition for c in configs])
    for c in configs:
        assert c.dataset == dataset and c.width == 64 and c.momentum == 0.9 and not c.etf_projector
        assert TABLE_OOD[dataset] <= set(c.ood_sets)
        if c.optimizer == "sgd":
            assert c.weight_decay == 5e-4  # the papers' SGD (A.1 follows DDU)
    space = make_param_space(preset)
    assert space["seed"]["grid_search"] == list(range(seeds))


def test_acceptance_shaped_tmlr_table1_on_digits():
    """The dry run of `ablation.py --preset tmlr_table1 --dataset digits --seeds 2 --epochs 2 --width 4`."""
    configs = resolved("tmlr_table1", {"dataset": "digits", "epochs": [2], "width": 4})
    assert [c.condition for c in configs] == ["resnet18-w4-l2-sn-lg-e2", "resnet50-w4-l2-sn-lg-e2",
                                              "resnet18-w4-nol2-sn-lg-logitnormloss-e2"]
    assert [c.batch_size for c in configs] == [1024, 768, 128]  # the cifar10 preset's 1024 (seed paper Sec. 3.1), then per-condition
    assert {c.ood_sets for c in configs} == {("photos", "scrambled", "noise")}  # the dataset's own OoD sets


def test_flags_override_per_condition_fields():
    """A fixed override wins over a product's own value (--batch-size 64 for every condition)."""
    configs = resolved("tmlr_table1", {"batch_size": 64, "lr": 0.05})
    assert {c.batch_size for c in configs} == {64} and {c.lr for c in configs} == {0.05}
    assert resolved("tmlr_table1", {"arch": ["resnet18"]})[-1].loss == "logitnorm"  # axis override: per product


def test_derived_fields_resolve_per_condition():
    """One grid with SGD and AdamW conditions: each gets its own optimizer's lr / weight decay, in its dict."""
    shared, conditions = grid_conditions("tmlr_table4")
    assert "lr" not in shared and "weight_decay" not in shared and "batch_size" not in shared
    by_arch = {c["arch"]: c for c in conditions}
    assert (by_arch["convnext_tiny"]["lr"], by_arch["vgg16"]["lr"]) == (1e-3, 0.1)
    assert shared["dataset"] == "cifar10" and "optimizer" not in shared


def test_conditions_that_would_merge_are_refused(monkeypatch):
    """Two conditions that differ only outside the condition name would share MLflow names and aggregate rows."""
    monkeypatch.setitem(GRIDS, "clash", GridPreset("digits", {"width": 4, "epochs": 2}, (
        {"arch": ("resnet18",), "batch_size": (32,)}, {"arch": ("resnet18",), "batch_size": (64,)})))
    with pytest.raises(ConfigError, match=r"both named 'resnet18-w4-nol2-sn-lg-e2'.*\['batch_size'\]"):
        grid_conditions("clash")
    monkeypatch.setitem(GRIDS, "no_clash", GridPreset("digits", {"width": 4, "epochs": 2}, (
        {"arch": ("resnet18",), "batch_size": (32,)}, {"arch": ("resnet18",), "batch_size": (64,), "l2": (True,)})))
    assert len(grid_conditions("no_clash")[1]) == 2


def test_unsupported_toggle_in_a_grid_fails_on_the_driver():
    with pytest.raises(ConfigError, match="spectral_norm: architecture 'cct_7_3x1'"):
        grid_conditions("tmlr_table4_cct", {"spectral_norm": [True]})
