"""The metric-key schema: the one place that names every logged number.

Tracking (MLflow), aggregation and serving import these names; nothing else spells a metric key by hand.
Keys are flat strings with '/' namespaces, as MLflow groups them in its UI:

    loss/train, accuracy/train, accuracy/val, accuracy/test, lr, time/epoch_s, time/eval_s
    nc/<nc metric>                  e.g. nc/nc1, nc/nc2_equiangular_means      (train-set features)
    ood/<ood set>/<score>/<metric>  e.g. ood/svhn/gmm/auroc, ood/photos/feature_norm/fpr95
    gmm/jitter                      the eps*I added to every class covariance (0 when none was needed)
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
GMM_JITTER = "gmm/jitter"
GMM_DEGENERATE_DIMS = "gmm/degenerate_dims"

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
# Detection metrics returned by ncood.ood.detection_metrics (REFERENCE.md section 5).
DETECTION_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")


def nc_key(metric: str) -> str:
    """'nc1' -> 'nc/nc1'."""
    return f"nc/{metric}"


def ood_key(ood_set: str, score: str, metric: str) -> str:
    """('svhn', 'gmm', 'auroc') -> 'ood/svhn/gmm/auroc'."""
    return f"ood/{ood_set}/{score}/{metric}"


def parse_ood_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of ood_key: 'ood/svhn/gmm/auroc' -> ('svhn', 'gmm', 'auroc'); None for other keys."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == "ood":
        return parts[1], parts[2], parts[3]
    return None
