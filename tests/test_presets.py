"""Every preset is the papers' setting: each config preset and each grid preset's resolved conditions are compared
with a table of the papers' settings written out here, row by row with its source. A preset without rows here fails:
a new preset brings its paper rows along. `--dry-run` lists the same resolved conditions without Ray or MLflow."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ncood.config import PRESETS, TrialConfig, make_config
from ncood.tune import jobs
from ncood.tune.grid import GRIDS, grid_conditions, seed_list

REPO = Path(__file__).resolve().parents[1]

# The recipe every paper trains with (seed paper "Inducing Early Neural Collapse ...", Sec. 3.1: SGD, initial lr
# 1e-1, batch 1024, cross-entropy; TMLR 2024 "Exploring Simple, High Quality OoD Detection with L2 Normalization",
# App. A.1: SGD 1e-1, gamma 0.1; momentum 0.9 and weight decay 5e-4 are DDU's), on the papers' model (seed paper
# Sec. 3.1: "All models (except those explicitly noted in the ablation study) use spectral normalization, leaky ReLUs
# and Global Average Pooling"; TMLR App. A.1: "All ResNet models use spectral normalization, global average pooling,
# and Leaky ReLUs"; coefficient 3: DDU `utils/args.py` sn_coeff = 3.0).
RECIPE = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, loss="ce", sn_coeff=3.0)
MODEL = dict(spectral_norm=True, leaky_gap=True)
# LR x0.1 at: seed paper Sec. 3.1 ("150 and 250 epochs for the 350 epoch models ... 75 and 90 for the 100 epoch
# ResNet50 models, and at 40 and 50 for the 60 epoch ResNet18 models"); TMLR App. A.1 the same.
MILESTONES = {60: (40, 50), 100: (75, 90), 350: (150, 250)}
# Seed paper Sec. 3.1: batch 1024 for all. BatchNorm over the whole batch (bn_groups 1: "four NVIDIA V100 GPUs" does
# not say whether a run used DataParallel over them, docs/method.md#bn-groups) in IEEE fp32 (V100s have no bf16/TF32).
CIFAR = dict(dataset="cifar10", width=64, batch_size=1024, bn_groups=1, precision="fp32", **RECIPE)
DIGITS = dict(dataset="digits", width=8, epochs=15, batch_size=128, bn_groups=1, precision="fp32", **RECIPE)  # CPU-sized, same recipe (README)
SEED_OOD = ("svhn", "cifar100", "tinyimagenet")  # seed paper Table 1's OoD test sets

# Config presets (ncood train --preset): the resolved TrialConfig fields.
CONFIG_PRESETS = {
    # seed paper Table 1 "No L2 60" (ResNet18, 60 epochs, LR x0.1 at 40/50, batch 1024), Sec. 3.1
    "cifar10": dict(CIFAR, arch="resnet18", epochs=60, milestones=(40, 50), l2=False, **MODEL),
    # the same recipe on the embedded digits, width-reduced: LR x0.1 at 2/3 and 5/6 of 15 epochs
    "digits": dict(DIGITS, arch="resnet18", milestones=(10, 12), l2=False, **MODEL),
    # Table 1's "No L2 60" recipe on Fashion-MNIST (the offline real-image set)
    "fmnist": dict(CIFAR, dataset="fashion_mnist", arch="resnet18", epochs=60, milestones=(40, 50), l2=False,
                   **MODEL),
}


def _row(base: dict, arch: str, epochs: int, l2: bool, **kw) -> dict:
    return dict(base, arch=arch, epochs=epochs, milestones=MILESTONES.get(epochs, (10, 12)), l2=l2, **kw)


# Grid presets (tune_jobs/ablation.py --preset): (seeds, every condition), one row per condition.
GRID_PRESETS = {
    "default": (15, [  # seed paper Table 1 ResNet18 L2 off/on, 15 seeds, on the CPU-sized digits recipe
        _row(DIGITS, "resnet18", 15, False, **MODEL),
        _row(DIGITS, "resnet18", 15, True, **MODEL),
    ]),
    "table1": (15, [
        _row(CIFAR, "resnet18", 350, False, **MODEL),  # seed paper Table 1 ResNet18 "No L2 350" (the DDU baseline)
        _row(CIFAR, "resnet18", 60, False, **MODEL),  # Table 1 ResNet18 "No L2 60"
        _row(CIFAR, "resnet18", 60, True, **MODEL),  # Table 1 ResNet18 "L2 60"
        _row(CIFAR, "resnet18", 350, True, **MODEL),  # TMLR Table 4 "ResNet18 (350)" L2
        _row(CIFAR, "resnet50", 350, False, **MODEL),  # Table 1 ResNet50 "No L2 350"
        _row(CIFAR, "resnet50", 100, False, **MODEL),  # Table 1 ResNet50 "No L2 100"
        _row(CIFAR, "resnet50", 100, True, **MODEL),  # Table 1 ResNet50 "L2 100"
        _row(CIFAR, "resnet50", 350, True, **MODEL),  # TMLR Table 4 "ResNet50 (350)" L2
    ]),
    # seed paper Table 2 (and Table 3): ResNet18, 60 epochs, spectral norm x leaky/GAP x L2, all 8 rows
    "table2": (15, [_row(CIFAR, "resnet18", 60, l2, spectral_norm=sn, leaky_gap=lg)
                    for sn in (False, True) for lg in (False, True) for l2 in (False, True)]),
    # ICML 2025 NC control (ETF projector x entropy regularizer 0.05, label smoothing 0.1: NC-OOD
    # resnet/pretrain_resnet_nc.py:193, pretrain_resnet_nc.sh `--alpha 0.05`) on Table 1's "No L2 60" model
    "nc_control": (15, [_row(CIFAR, "resnet18", 60, False, etf_projector=etf, entropy_reg=ent, label_smoothing=0.1,
                             **MODEL) for etf in (False, True) for ent in (0.0, 0.05)]),
    # Table 1's ResNet18 60-epoch L2 off/on recipe on Fashion-MNIST (GPU) and its 2-core variant
    "fmnist": (15, [_row(dict(CIFAR, dataset="fashion_mnist"), "resnet18", 60, l2, **MODEL) for l2 in (False, True)]),
    "fmnist_cpu": (3, [dict(DIGITS, dataset="fashion_mnist", arch="resnet18", epochs=15, milestones=(10, 12), l2=l2,
                            train_subset=10000, **MODEL) for l2 in (False, True)]),
}
OOD_SETS = {"table1": SEED_OOD}  # presets that fix the OoD sets (the others keep the dataset's default list)


def _resolved(cfg: TrialConfig, fields) -> dict:
    return {f: (cfg.milestones if f == "milestones" else getattr(cfg, f)) for f in fields}


def _key(row: dict) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items()))


def test_every_preset_has_rows_here():
    assert set(CONFIG_PRESETS) == set(PRESETS), "a config preset without its paper row in tests/test_presets.py"
    from test_presets_tmlr import EXPECTED as TMLR_ROWS  # the TMLR 2024 presets are pinned there

    assert set(GRID_PRESETS) | set(TMLR_ROWS) == set(GRIDS), "a grid preset without its paper rows in the tests"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_preset_is_the_papers_setting(name):
    want = CONFIG_PRESETS[name]
    assert _resolved(make_config(name), want) == want


@pytest.mark.parametrize("name", sorted(GRID_PRESETS))
def test_grid_preset_conditions_are_the_papers_rows(name):
    seeds, rows = GRID_PRESETS[name]
    shared, conditions = grid_conditions(name)
    configs = [TrialConfig.from_dict({**shared, **c, "seed": 0}) for c in conditions]
    got = sorted(_key(_resolved(cfg, rows[0])) for cfg in configs)
    assert got == sorted(_key(r) for r in rows)
    assert len({cfg.condition for cfg in configs}) == len(rows)  # distinct conditions: runs are never merged
    assert seed_list(name) == list(range(seeds))
    if name in OOD_SETS:
        assert {cfg.ood_sets for cfg in configs} == {OOD_SETS[name]}


@pytest.mark.parametrize("name", sorted(GRID_PRESETS))  # TMLR presets: tests/test_presets_tmlr.py
def test_grid_help_names_table_epochs_batch_and_milestones(name):
    help_ = GRIDS[name].help
    assert "Table" in help_ or name == "default" or "ICML" in help_
    shared, conditions = grid_conditions(name)
    for c in conditions:
        cfg = TrialConfig.from_dict({**shared, **c, "seed": 0})
        assert f"{cfg.milestones[0]}/{cfg.milestones[1]}" in help_, (name, cfg.condition)
        assert str(cfg.epochs) in help_ and f"batch {cfg.batch_size}" in help_, (name, cfg.condition)


def test_only_the_ablation_turns_spectral_norm_or_leaky_gap_off():
    """Seed paper Sec. 3.1: all models except the ablation study's use SN + leaky/GAP; the defaults too. TMLR App.
    A.1 says it of every ResNet; its VGG16, ConvNeXt and CCT rows train without (pinned in test_presets_tmlr.py)."""
    default = TrialConfig()
    assert default.spectral_norm and default.leaky_gap and default.sn_coeff == 3.0
    for name in GRIDS:
        shared, conditions = grid_conditions(name)
        off = [c for c in conditions if not (c["spectral_norm"] and c["leaky_gap"]) and "resnet" in c["arch"]]
        assert bool(off) == (name == "table2"), name


def test_label_smoothing_is_cross_entropy_with_smoothed_targets():
    from ncood.train import training_loss

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 10, generator=g), torch.arange(16) % 10
    z = torch.randn(16, 8, generator=g)
    smooth = training_loss(None, logits, z, y, make_config("digits", label_smoothing=0.1))
    q = torch.full((16, 10), 0.1 / 10).scatter_(1, y[:, None], 0.9 + 0.1 / 10)  # (1 - eps) one-hot + eps / C
    expect = -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(smooth, expect, rtol=1e-6, atol=1e-6)
    plain = training_loss(None, logits, z, y, make_config("digits"))
    torch.testing.assert_close(plain, F.cross_entropy(logits, y), rtol=0, atol=0)


def test_dry_run_lists_every_resolved_condition_without_ray():
    code = ("import runpy, sys\n"
            f"sys.argv = ['ablation.py', '--preset', 'table1', '--dry-run']\n"
            "try:\n"
            f"    runpy.run_path({str(REPO / 'tune_jobs' / 'ablation.py')!r}, run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('IMPORTED', 'ray' in sys.modules, 'mlflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED False False" in proc.stdout  # neither Ray nor MLflow was loaded
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("condition "))
    cols = lines[header].split()
    rows = [dict(zip(cols, line.split())) for line in lines[header + 1:header + 9]]
    assert len(rows) == 8 and "8 conditions x 15 seeds" in proc.stdout
    assert all(r["spectral_norm"] == "True" and r["leaky_gap"] == "True" for r in rows)
    assert {(r["arch"], r["l2"], r["epochs"], r["batch_size"], r["milestones"]) for r in rows} == {
        (_r["arch"], str(_r["l2"]), str(_r["epochs"]), "1024", "/".join(map(str, _r["milestones"])))
        for _r in GRID_PRESETS["table1"][1]}
    assert jobs.describe_grid("table2", seeds=2).count("resnet18-w64-") == 8


def test_search_dry_run_names_the_tuned_condition(capsys):
    from job_scripts import load_job

    assert load_job("search").main(["--preset", "table1", "--archs", "resnet18", "--epochs", "60", "--l2", "on",
                                    "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "resnet18-w64-l2-sn-lg-e60 (the first of 1 conditions)" in out and "lr log-uniform" in out


def test_unset_ddu_toggles_follow_the_architecture():
    """Unset, spectral norm and leaky/GAP are on for the papers' ResNets and DDU's WRN, off for VGG16 (TMLR A.1 names
    only the ResNets; it takes them when asked) and off for ConvNeXt and CCT, which have no conv/BN/ReLU stack for
    them; set on there, they are refused."""
    from ncood.config import ConfigError
    from ncood.models import register_model

    for arch in ("resnet18", "resnet50", "wide_resnet28_10"):
        cfg = make_config("digits", arch=arch)
        assert (cfg.spectral_norm, cfg.leaky_gap) == (True, True), arch
    vgg = make_config("digits", arch="vgg16")
    assert (vgg.spectral_norm, vgg.leaky_gap) == (False, False) and "-sn" not in vgg.condition
    asked = make_config("digits", arch="vgg16", spectral_norm=True, leaky_gap=True)
    assert (asked.spectral_norm, asked.leaky_gap) == (True, True) and "-sn-lg" in asked.condition
    with pytest.raises(ValueError, match="defaults .* must be among the model's toggles"):
        register_model(toggles=(), defaults=("spectral_norm",))
    cct = make_config("digits", arch="cct_7_3x1")
    assert (cct.spectral_norm, cct.leaky_gap) == (False, False) and "-sn" not in cct.condition
    with pytest.raises(ConfigError, match="spectral_norm: architecture 'cct_7_3x1'"):
        make_config("digits", arch="cct_7_3x1", spectral_norm=True)
