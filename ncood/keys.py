"""The metric-key schema: the one place that names every logged number.

Tracking (MLflow), aggregation and serving import these names; nothing else spells a metric key by hand.
Keys are flat strings with '/' namespaces, as MLflow groups them in its UI:

    loss/train, accuracy/train, accuracy/val, accuracy/test, lr, time/epoch_s, time/eval_s
    nc/<nc metric>                  e.g. nc/nc1, nc/nc2_equiangular_means      (train-set features)
    ood/<ood set>/<score>/<metric>  e.g. ood/svhn/gmm/auroc, ood/photos/feature_norm/fpr95
    <score>/<fit diagnostic>        what a score's fit on the train features chose, e.g. gmm/jitter (the eps*I
                                    added to every class covariance, 0 when none was needed), vim/alpha
MLflow params (not metrics) of a score's hyperparameters: score/<score>/<field>, e.g. score/knn/k.
    gmm/degenerate_dims             max over classes of the class's numerically zero-variance feature dimensions
                                    (ncood.ood.gaussian.zero_variance_dims; 0 = no class has one)
"""
from __future__ import annotations

LOSS_TRAIN = "loss/train"
ACC_TRAIN = "accuracy/train"
ACC_VAL = "accuracy/val"
ACC_TEST = "accuracy/test"
LR = "lr"
EPOCH_TIME = "time/epoch_s"
EVAL_TIME = "time/eval_s"

# NC metric names returned by ncood.collapse.nc_metrics (REFERENCE.md section 4).
NC_METRICS = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equinorm_classifier",
    "nc2_equiangular_means",
    "nc2_equiangular_classifier",
    "nc2_etf_distance",
    "nc3_self_duality",
    "nc4_ncc_mismatch",
)
# Detection metrics returned by ncood.ood.detection_metrics (REFERENCE.md section 5). fpr95 is the papers' FPR95
# (OoD accepted at 95% ID accepted); fpr95_id_rejected is OpenOOD's number of the same name (ID rejected at 95% OoD
# caught): see ncood/ood/metrics.py.
DETECTION_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "fpr95_id_rejected")
# Top-level key namespaces: no OoD score may be named like one (its fit diagnostics would land among them).
NAMESPACES = ("loss", "accuracy", "lr", "time", "nc", "ood", "score")


def nc_key(metric: str) -> str:
    """'nc1' -> 'nc/nc1'."""
    return f"nc/{metric}"


def ood_key(ood_set: str, score: str, metric: str) -> str:
    """('svhn', 'gmm', 'auroc') -> 'ood/svhn/gmm/auroc'."""
    return f"ood/{ood_set}/{score}/{metric}"


def fit_key(score: str, name: str) -> str:
    """('vim', 'alpha') -> 'vim/alpha': a number a score's fit chose (a metric, logged at every evaluation)."""
    return f"{score}/{name}"


GMM_JITTER = fit_key("gmm", "jitter")
GMM_DEGENERATE_DIMS = fit_key("gmm", "degenerate_dims")


def score_param_key(score: str, name: str) -> str:
    """('knn', 'k') -> 'score/knn/k': a score's hyperparameter, logged once per run as an MLflow param."""
    return f"score/{score}/{name}"


def parse_ood_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of ood_key: 'ood/svhn/gmm/auroc' -> ('svhn', 'gmm', 'auroc'); None for other keys."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "ood":
        return parts[1], parts[2], parts[3]
    return None
