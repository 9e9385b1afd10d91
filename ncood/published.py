"""The papers' published numbers, as data: what a sweep's aggregation puts beside its measured values.

Sources (values transcribed from the papers' tables; AUROC, FPR95 and accuracy as fractions, as ncood logs them):

    SEED  "Inducing Early Neural Collapse in Deep Neural Networks for Improved Out-of-Distribution Detection"
          (anonymous for double-blind review; by its content the work TMLR 2024 cites as Haas, Yolland & Rabus 2023): Table 1 (GMM AUROC on SVHN / CIFAR-100 / Tiny ImageNet and CIFAR-10 test accuracy,
          min / max / mean +- SD over 15 seeds), Table 2 (the ablation: GMM AUROC on SVHN and accuracy, min / max /
          mean), Table 3 (NC metrics, mean and SD over 15 seeds).
    TMLR  "Exploring Simple, High Quality Out-of-Distribution Detection with L2 Normalization" (TMLR 2/2024):
          Tables 2-8 (AUROC / FPR95 in percent there; accuracy), the feature-norm score unless the table says else.
          The DDU WRN-28-10 number is not in these texts and is not listed.

A published row is the condition it was measured under (TrialConfig field -> value), the measurement (score, OoD
set, metric) and its value(s). `matches(row, run_fields)` decides whether a run's condition is the published one:
every condition field the row states must equal the run's (a field the run does not have, e.g. one that a newer
TrialConfig added, never matches); a field stated as None ("not stated by the paper") constrains nothing, but a row
whose dataset, arch, l2, epochs or loss is unknown is never matched. New axes (a dataset, an optimizer, a schedule)
need only new rows or one more entry in a recipe below, not new code.

Caveats written into the rows' notes: the seed paper's NC metrics follow its own definitions (Sec. 3.2), which
ncood.collapse implements (NC1 divided by C as its Eq. 3); TMLR's "SM" score is a softmax of down-scaled features
with a scale tuned on test data (its App. A.2), not ncood's `msp`, so those rows carry the score name `msp_scaled`
that no ncood score has; TMLR Table 4's No-L2 columns are 350-epoch models for ResNet18/50 (Table 8 and the
identical No-L2 numbers of the (60) and (350) rows say so).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ncood import keys

__all__ = ["PUBLISHED", "PAPERS", "PublishedResult", "REQUIRED_FIELDS", "matches", "metric_key"]

PAPERS = {
    "seed": "Inducing Early Neural Collapse in Deep Neural Networks for Improved Out-of-Distribution Detection",
    "tmlr": "Exploring Simple, High Quality Out-of-Distribution Detection with L2 Normalization (TMLR 2024)",
}
REQUIRED_FIELDS = ("dataset", "arch", "l2", "epochs", "loss")  # a row that leaves one of these open never matches
ACCURACY = "accuracy"  # metric name of test accuracy rows (score and ood_set None)


@dataclass(frozen=True)
class PublishedResult:
    """One published number (or min / max / mean +- sd of one) and the condition it was measured under."""

    paper: str  # key of PAPERS
    table: str  # e.g. "Table 1"
    row: str  # the table's own row / column label, e.g. "ResNet18 No L2 60"
    condition: Mapping[str, Any]  # TrialConfig field -> value (None: not stated by the paper)
    metric: str  # "auroc" | "fpr95" | ACCURACY | an NC metric of keys.NC_METRICS
    mean: float
    score: str | None = None  # OoD score (ncood score names); None for accuracy and NC rows
    ood_set: str | None = None
    sd: float | None = None
    min: float | None = None
    max: float | None = None
    seeds: int | None = None  # models the paper aggregated (15 in the seed paper)
    note: str = ""

    @property
    def key(self) -> str:
        return metric_key(self.metric, self.score, self.ood_set)


def metric_key(metric: str, score: str | None = None, ood_set: str | None = None) -> str:
    """The ncood.keys metric key a published number compares with."""
    if metric == ACCURACY:
        return keys.ACC_TEST
    if metric in keys.NC_METRICS:
        return keys.nc_key(metric)
    return keys.ood_key(ood_set, score, metric)


def matches(row: PublishedResult, run_fields: Mapping[str, Any]) -> bool:
    """Whether a run with these condition/config fields ran the row's published condition (module docstring)."""
    if any(row.condition.get(f) is None for f in REQUIRED_FIELDS):
        return False
    for name, value in row.condition.items():
        if value is None:
            continue
        if name not in run_fields or run_fields[name] is None or run_fields[name] != value:
            return False
    return True


# ---- the recipes: what every row of a paper's table shares ------------------------------------------------------------
# Seed paper Sec. 3.1: DDU's ResNets with SN + leaky ReLU + GAP (all but the ablation), batch 1024, SGD lr 0.1,
# cross-entropy, CIFAR-10 with a 10% validation split; 15 seeds. ncood's plain cross-entropy model: no label
# smoothing, no ETF projector, no entropy regularizer; width 64 is the papers' full network.
_NC_OFF = {"label_smoothing": 0.0, "etf_projector": False, "entropy_reg": 0.0}
SEED_RECIPE = {"dataset": "cifar10", "width": 64, "batch_size": 1024, "lr": 0.1, "loss": "ce", "spectral_norm": True,
               "leaky_gap": True, **_NC_OFF}
# TMLR App. A.1: SGD lr 0.1, gamma 0.1 at 40/50, 75/90, 150/250; "All ResNet models use spectral normalization,
# global average pooling, and Leaky ReLUs"; batch 1024 where GPU RAM permitted, ResNet50: 768 on CIFAR-10 and 512 on
# Tiny ImageNet. VGG16: SN and leaky/GAP are not stated (None: any).
TMLR_RECIPE = {"width": 64, "batch_size": 1024, "lr": 0.1, "loss": "ce", "spectral_norm": True, "leaky_gap": True,
               **_NC_OFF}
_TMLR_BATCH = {("resnet50", "cifar10"): 768, ("resnet50", "tinyimagenet"): 512, ("resnet50", "cifar100"): None}
# CCT-7/3x1 and ConvNeXt-Tiny (App. A.1): cosine annealing, ConvNeXt with AdamW. The CCT rows match runs of the
# tmlr_table4_cct preset; ConvNeXt's leave the epochs open (A.1 gives none), so they match no run (listed for
# completeness).
_TMLR_OTHER = {"cct_7_3x1": {"epochs": 300, "batch_size": 128, "spectral_norm": None, "leaky_gap": None,
                             "lr": None, "schedule": "cosine"},
               "convnext_tiny": {"epochs": None, "spectral_norm": None, "leaky_gap": None, "lr": None,
                                 "optimizer": "adamw", "schedule": "cosine"}}


def _seed_cond(arch: str, epochs: int, l2: bool, **kw: Any) -> dict[str, Any]:
    return {**SEED_RECIPE, "arch": arch, "epochs": epochs, "l2": l2, **kw}


def _tmlr_cond(arch: str, epochs: int | None, l2: bool, dataset: str = "cifar10") -> dict[str, Any]:
    cond = {**TMLR_RECIPE, "dataset": dataset, "arch": arch, "epochs": epochs, "l2": l2}
    if (arch, dataset) in _TMLR_BATCH:
        cond["batch_size"] = _TMLR_BATCH[(arch, dataset)]
    if arch == "vgg16":
        cond.update(spectral_norm=None, leaky_gap=None)
    return {**cond, **_TMLR_OTHER.get(arch, {})}


def _mean_sd(text: str) -> tuple[float, float]:
    """'0.915 +- .018' -> (0.915, 0.018)."""
    mean, sd = text.split("+-")
    return float(mean), float(sd)


# ---- seed paper Table 1: ResNet18 / ResNet50 on CIFAR-10, 15 seeds, GMM AUROC and test accuracy ------------------------
# (label, arch, epochs, l2) -> per column (SVHN, CIFAR100, Tiny ImageNet, CIFAR10 test accuracy): (min, max, mean+-sd)
_SEED_T1 = {
    ("ResNet18 No L2 350", "resnet18", 350, False): (
        (0.877, 0.949, "0.915 +- .018"), (0.861, 0.885, "0.875 +- .008"), (0.881, 0.909, "0.894 +- .009"),
        (0.928, 0.941, "0.935 +- .005")),
    ("ResNet18 No L2 60", "resnet18", 60, False): (
        (0.848, 0.953, "0.912 +- .035"), (0.796, 0.845, "0.824 +- .014"), (0.809, 0.872, "0.841 +- .015"),
        (0.881, 0.912, "0.898 +- .008")),
    ("ResNet18 L2 60", "resnet18", 60, True): (
        (0.924, 0.961, "0.938 +- .010"), (0.878, 0.886, "0.881 +- .002"), (0.898, 0.911, "0.904 +- .004"),
        (0.924, 0.929, "0.927 +- .001")),
    ("ResNet50 No L2 350", "resnet50", 350, False): (
        (0.903, 0.987, "0.955 +- .026"), (0.817, 0.891, "0.871 +- .018"), (0.881, 0.909, "0.894 +- .020"),
        (0.930, 0.946, "0.939 +- .006")),
    ("ResNet50 No L2 100", "resnet50", 100, False): (
        (0.869, 0.980, "0.944 +- .029"), (0.794, 0.866, "0.837 +- .022"), (0.852, 0.905, "0.880 +- .016"),
        (0.896, 0.927, "0.916 +- .008")),
    ("ResNet50 L2 100", "resnet50", 100, True): (
        (0.927, 0.955, "0.945 +- .007"), (0.892, 0.896, "0.894 +- .001"), (0.912, 0.918, "0.915 +- .002"),
        (0.937, 0.943, "0.941 +- .002")),
}

# ---- seed paper Table 2: the ablation, ResNet18 60 epochs, CIFAR-10 vs SVHN, GMM AUROC and accuracy (min, max, mean) --
# The text extraction lost check marks in the SN and leaky/GAP columns. The order is read as in Table 3, whose
# marks survived: SN off for rows 1-4 and on for rows 5-8, leaky/GAP off/on in pairs, L2 off/on alternating (the L2
# column is intact in both tables). Rows 7 and 8 equal Table 1's "No L2 60" (0.848 / 0.953 / 0.912, accuracy 0.881 /
# 0.912 / 0.898) and "L2 60" (0.924 / 0.961 / 0.938, accuracy 0.924 / 0.929 / 0.927), the models with SN and
# leaky/GAP on (Sec. 3.1): the last pair is SN + leaky/GAP, which fixes the order.
_SEED_T2 = {  # (spectral_norm, leaky_gap, l2) -> ((AUROC min, max, mean), (accuracy min, max, mean))
    (False, False, False): ((0.855, 0.939, 0.910), (0.884, 0.927, 0.916)),
    (False, False, True): ((0.894, 0.951, 0.932), (0.924, 0.930, 0.927)),
    (False, True, False): ((0.830, 0.965, 0.889), (0.872, 0.909, 0.898)),
    (False, True, True): ((0.917, 0.958, 0.944), (0.925, 0.929, 0.927)),
    (True, False, False): ((0.884, 0.954, 0.923), (0.904, 0.926, 0.917)),
    (True, False, True): ((0.903, 0.959, 0.934), (0.925, 0.931, 0.928)),
    (True, True, False): ((0.848, 0.953, 0.912), (0.881, 0.912, 0.898)),
    (True, True, True): ((0.924, 0.961, 0.938), (0.924, 0.929, 0.927)),
}

# ---- seed paper Table 3: NC metrics, ResNet18 60 epochs, mean and SD; same row order as Table 2 (marks intact) -------
_NC_COLUMNS = keys.SEED_TABLE3_NC  # NC4 there is the NCC error against the labels (Sec. 3.2's wording)
_SEED_T3 = {  # (spectral_norm, leaky_gap, l2) -> (mean, sd) per _NC_COLUMNS
    (False, False, False): ((1.967, 0.136), (0.076, 0.007), (0.033, 0.011), (0.098, 0.008), (0.094, 0.005),
                            (0.169, 0.015), (0.002, 0.001)),
    (False, False, True): ((0.154, 0.004), (0.014, 0.001), (0.023, 0.001), (0.044, 0.002), (0.083, 0.001),
                           (0.038, 0.001), (0.000, 0.000)),
    (False, True, False): ((2.558, 0.329), (0.100, 0.018), (0.064, 0.027), (0.118, 0.017), (0.112, 0.030),
                           (0.271, 0.059), (0.008, 0.005)),
    (False, True, True): ((0.170, 0.005), (0.013, 0.001), (0.024, 0.001), (0.047, 0.002), (0.084, 0.001),
                          (0.039, 0.001), (0.000, 0.000)),
    (True, False, False): ((2.139, 0.412), (0.083, 0.019), (0.036, 0.013), (0.108, 0.018), (0.095, 0.006),
                           (0.182, 0.029), (0.004, 0.004)),
    (True, False, True): ((0.163, 0.005), (0.015, 0.002), (0.024, 0.001), (0.047, 0.002), (0.085, 0.001),
                          (0.038, 0.001), (0.000, 0.000)),
    (True, True, False): ((2.690, 0.368), (0.111, 0.018), (0.051, 0.020), (0.124, 0.015), (0.106, 0.012),
                          (0.260, 0.031), (0.008, 0.005)),
    (True, True, True): ((0.171, 0.005), (0.014, 0.002), (0.023, 0.001), (0.049, 0.003), (0.084, 0.001),
                         (0.039, 0.001), (0.000, 0.000)),
}


def _ablation_label(sn: bool, lg: bool, l2: bool) -> str:
    return f"SN {'on' if sn else 'off'}, leaky/GAP {'on' if lg else 'off'}, L2 {'on' if l2 else 'off'}"


def _seed_rows() -> list[PublishedResult]:
    rows = []
    for (label, arch, epochs, l2), cols in _SEED_T1.items():
        cond = _seed_cond(arch, epochs, l2)
        for ood, (lo, hi, text) in zip(("svhn", "cifar100", "tinyimagenet", None), cols):
            mean, sd = _mean_sd(text)
            metric, score = ("auroc", "gmm") if ood else (ACCURACY, None)
            rows.append(PublishedResult("seed", "Table 1", label, cond, metric, mean, score, ood, sd, lo, hi, 15))
    for (sn, lg, l2), (auroc, acc) in _SEED_T2.items():
        cond = _seed_cond("resnet18", 60, l2, spectral_norm=sn, leaky_gap=lg)
        label = _ablation_label(sn, lg, l2)
        rows.append(PublishedResult("seed", "Table 2", label, cond, "auroc", auroc[2], "gmm", "svhn", None, auroc[0],
                                    auroc[1], 15))
        rows.append(PublishedResult("seed", "Table 2", label, cond, ACCURACY, acc[2], None, None, None, acc[0], acc[1],
                                    15))
    for (sn, lg, l2), values in _SEED_T3.items():
        cond = _seed_cond("resnet18", 60, l2, spectral_norm=sn, leaky_gap=lg)
        for metric, (mean, sd) in zip(_NC_COLUMNS, values):
            rows.append(PublishedResult("seed", "Table 3", _ablation_label(sn, lg, l2), cond, metric, mean, sd=sd,
                                        seeds=15, note="train-set features; definitions of the paper's Sec. 3.2"))
    return rows


# ---- TMLR 2024 Tables 2-8 (percent in the paper; fractions here) --------------------------------------------------------
def _pct(text: str) -> tuple[float, float]:
    """'97.4 / 14.8' (AUROC / FPR95 in %) -> (0.974, 0.148)."""
    auroc, fpr = text.split("/")
    return round(float(auroc) / 100, 6), round(float(fpr) / 100, 6)


def _tmlr(table: str, label: str, cond: dict, ood: str, text: str, score: str = "feature_norm",
          **kw: Any) -> list[PublishedResult]:
    auroc, fpr = _pct(text)
    return [PublishedResult("tmlr", table, label, cond, "auroc", auroc, score, ood, **kw),
            PublishedResult("tmlr", table, label, cond, "fpr95", fpr, score, ood, **kw)]


def _tmlr_acc(table: str, label: str, cond: dict, percent: float, **kw: Any) -> PublishedResult:
    return PublishedResult("tmlr", table, label, cond, ACCURACY, round(percent / 100, 6), **kw)


_SCALED_SM = "softmax of down-scaled features, scale tuned on test data (App. A.2): not ncood's msp"
# Table 2: L2 models; feature norm ("Norm") and scaled softmax ("SM"); VGG16 and ResNet18 60 epochs, ResNet50 100.
_TMLR_T2 = {("VGG16", "vgg16", 60): ("95.8 / 28.5", "94.8 / 36.4", "88.4 / 59.1", "87.9 / 60.8", "89.9 / 50.9",
                                     "89.3 / 53.6"),
            ("ResNet18", "resnet18", 60): ("97.4 / 14.8", "96.8 / 18.8", "88.7 / 55.4", "88.7 / 55.9",
                                           "91.1 / 44.6", "90.7 / 47.1"),
            ("ResNet50", "resnet50", 100): ("98.6 / 7.80", "98.5 / 9.10", "90.4 / 49.3", "90.5 / 49.5",
                                            "91.9 / 43.8", "91.9 / 43.4")}
# Table 3: ResNet18 L2 60, 15 seeds, min / max / mean per score and OoD set. "Norm - Logits" and "MaxLogit": ncood
# reads them as measured on W z + b, the normalization off at test time (raw_logit_norm, raw_max_logit). The paper
# does not say so for Table 3; App. A.2 says "normalization must be turned off at test time" to keep the feature
# magnitudes (in its argument about softmax), and Table 3's logit figures track feature_norm's, while W z/||z|| + b
# (logit_norm / max_logit of an L2 model) carries nothing of ||z|| (docs/method.md#scores).
_TMLR_T3 = {  # (score, ood) -> (min, max, mean) as 'AUROC / FPR95'
    ("feature_norm", "svhn"): ("96.3 / 6.93", "98.6 / 23.5", "97.4 / 14.8"),
    ("raw_logit_norm", "svhn"): ("95.9 / 7.51", "98.4 / 24.3", "97.2 / 15.9"),
    ("raw_max_logit", "svhn"): ("95.6 / 9.12", "98.1 / 27.9", "96.9 / 18.7"),
    ("feature_norm", "cifar100"): ("88.2 / 52.1", "89.4 / 57.6", "88.7 / 55.4"),
    ("raw_logit_norm", "cifar100"): ("88.5 / 51.0", "89.5 / 56.3", "88.9 / 53.9"),
    ("raw_max_logit", "cifar100"): ("88.3 / 52.6", "89.4 / 57.9", "88.8 / 55.8"),
}
# Table 4: feature norm, No L2 vs L2 (L2 epochs in brackets; No L2 of ResNets: 350 epochs), then accuracy (%).
_TMLR_T4 = {  # (label, arch, no-L2 epochs, L2 epochs) -> (SVHN noL2, L2, CIFAR100 noL2, L2, Tiny noL2, L2, acc noL2, L2)
    ("VGG16", "vgg16", None, 60): ("82.4 / 72.2", "95.8 / 28.5", "84.4 / 63.1", "88.4 / 59.1", "86.4 / 57.0",
                                   "89.9 / 50.9", 92.4, 92.0),
    ("ResNet18 (60)", "resnet18", 350, 60): ("77.8 / 76.6", "97.4 / 14.8", "81.0 / 66.5", "88.7 / 55.4",
                                             "80.5 / 67.3", "91.1 / 44.6", 93.7, 92.6),
    ("ResNet50 (100)", "resnet50", 350, 100): ("85.8 / 51.7", "98.6 / 7.80", "77.7 / 66.1", "90.4 / 49.3",
                                               "77.8 / 64.3", "91.9 / 43.8", 93.8, 94.1),
    ("ResNet18 (350)", "resnet18", 350, 350): ("77.8 / 76.6", "96.0 / 25.2", "81.0 / 66.5", "89.7 / 53.4",
                                               "80.5 / 67.3", "90.4 / 46.9", 93.7, 93.4),
    ("ResNet50 (350)", "resnet50", 350, 350): ("85.8 / 51.7", "96.1 / 24.8", "77.7 / 66.1", "88.9 / 54.6",
                                               "77.8 / 64.3", "89.3 / 50.4", 93.8, 94.6),
    ("CCT_7_3x1", "cct_7_3x1", 300, 300): ("62.2 / 85.7", "92.0 / 62.9", "70.9 / 75.9", "89.7 / 53.1",
                                           "76.3 / 65.0", "91.1 / 44.0", 96.4, 96.4),
    ("ConvNeXt_Tiny*", "convnext_tiny", None, None): ("82.1 / 81.3", "88.4 / 68.9", "82.2 / 74.0", "85.5 / 68.2",
                                                      "83.3 / 70.3", "85.5 / 64.2", 88.2, 89.2),
}
# Tables 5-8: (table, label, ID dataset, arch, no-L2 epochs, L2 epochs, OoD sets) -> AUROC/FPR95 noL2, L2 per OoD set,
# then accuracy noL2, L2 (%).
_TMLR_T5_8 = {
    ("Table 5", "ResNet18 GTSRB", "gtsrb", "resnet18", 60, 60, ("svhn", "cifar100", "tinyimagenet")): (
        "50.5 / 93.3", "95.6 / 20.5", "45.7 / 91.2", "93.6 / 19.9", "49.4 / 88.5", "94.8 / 17.4", 84.7, 82.8),
    ("Table 6", "ResNet18 TinyImageNet", "tinyimagenet", "resnet18", 60, 60, ("svhn", "cifar100")): (
        "65.7 / 90.2", "85.4 / 51.3", "63.5 / 88.8", "62.0 / 91.3", 46.5, 39.9),
    ("Table 6", "ResNet50 TinyImageNet", "tinyimagenet", "resnet50", 60, 60, ("svhn", "cifar100")): (
        "68.5 / 79.9", "85.9 / 45.3", "66.2 / 86.5", "64.8 / 91.3", 52.5, 49.1),
    ("Table 7", "ResNet50 CIFAR100", "cifar100", "resnet50", 350, 150, ("svhn", "cifar10", "tinyimagenet")): (
        "83.0 / 63.9", "91.1 / 52.6", "73.2 / 84.5", "77.1 / 80.9", "73.4 / 82.8", "84.2 / 66.6", 74.2, 74.7),
    ("Table 8", "ResNet18 (60 epochs both)", "cifar10", "resnet18", 60, 60, ("svhn", "cifar100", "tinyimagenet")): (
        "65.6 / 92.9", "97.4 / 14.8", "77.1 / 80.6", "88.7 / 55.4", "80.4 / 75.4", "91.1 / 44.6", 89.8, 92.6),
}


def _l2_label(label: str, l2: bool) -> str:
    return f"{label} {'L2' if l2 else 'No L2'}"


def _tmlr_rows() -> list[PublishedResult]:
    rows = []
    for (label, arch, epochs), cells in _TMLR_T2.items():
        cond = _tmlr_cond(arch, epochs, True)
        for i, ood in enumerate(("svhn", "cifar100", "tinyimagenet")):
            rows += _tmlr("Table 2", f"{label} L2", cond, ood, cells[2 * i])
            rows += _tmlr("Table 2", f"{label} L2", cond, ood, cells[2 * i + 1], score="msp_scaled", note=_SCALED_SM)
    cond = _tmlr_cond("resnet18", 60, True)
    for (score, ood), (lo, hi, mean) in _TMLR_T3.items():
        (a_lo, f_lo), (a_hi, f_hi), (a_mean, f_mean) = _pct(lo), _pct(hi), _pct(mean)
        rows.append(PublishedResult("tmlr", "Table 3", "ResNet18 L2 60", cond, "auroc", a_mean, score, ood, None,
                                    a_lo, a_hi, 15))
        rows.append(PublishedResult("tmlr", "Table 3", "ResNet18 L2 60", cond, "fpr95", f_mean, score, ood, None,
                                    f_lo, f_hi, 15))
    for (label, arch, e_nol2, e_l2), cells in _TMLR_T4.items():
        for l2, epochs in ((False, e_nol2), (True, e_l2)):
            if not l2 and label.endswith("(350)"):
                continue  # the same No-L2 350 models as the "(60)"/"(100)" rows above: identical numbers, listed once
            cond = _tmlr_cond(arch, epochs, l2)
            for i, ood in enumerate(("svhn", "cifar100", "tinyimagenet")):
                rows += _tmlr("Table 4", _l2_label(label, l2), cond, ood, cells[2 * i + l2])
            rows.append(_tmlr_acc("Table 4", _l2_label(label, l2), cond, cells[6 + l2]))
    for (table, label, dataset, arch, e_nol2, e_l2, oods), cells in _TMLR_T5_8.items():
        for l2, epochs in ((False, e_nol2), (True, e_l2)):
            cond = _tmlr_cond(arch, epochs, l2, dataset)
            for i, ood in enumerate(oods):
                rows += _tmlr(table, _l2_label(label, l2), cond, ood, cells[2 * i + l2])
            rows.append(_tmlr_acc(table, _l2_label(label, l2), cond, cells[2 * len(oods) + l2]))
    return rows


PUBLISHED: tuple[PublishedResult, ...] = tuple(_seed_rows() + _tmlr_rows())
