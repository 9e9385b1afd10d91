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


# ---- run tags, roles and kinds ---------------------------------------------------------------------------------------
# What ncood.tracking writes on runs and ncood.runs_query, aggregation and serving filter on: spelled here only.
TAG_ROLE = "ncood.role"  # which kind of run: one of the ROLE_* values
ROLE_SWEEP, ROLE_TRIAL, ROLE_AGGREGATE = "sweep", "trial", "aggregate"  # parent, child, the aggregate run
TAG_KIND = "ncood.kind"  # on sweep and aggregate runs: one of the KIND_* values
KIND_ABLATION, KIND_SEARCH, KIND_NC_INTERVENTION = "ablation", "search", "nc_intervention"
TAG_SWEEP_RUN_ID = "ncood.sweep_run_id"  # on an aggregate run: the sweep it summarises (not an MLflow child)
TAG_CONDITION = "condition"
TAG_SEED = "seed"
TAG_TRIAL_ID = "ray_trial_id"
TAG_RAY_EXPERIMENT = "ray_experiment_path"
TAG_ERROR = "error"  # set on FAILED runs: exception type, message and traceback tail
TAG_FAILURE_KIND = "failure_kind"  # on FAILED runs: tracking | oom | killed | error (ncood.tune.status)
PREVIOUS = "previous_"  # prefix: the same tag for a failure the trial recovered from (retry from checkpoint)
TAG_PREVIOUS_ERROR = PREVIOUS + TAG_ERROR
TAG_PREVIOUS_FAILURE_KIND = PREVIOUS + TAG_FAILURE_KIND
TAG_KILLED_REASON = "killed_reason"  # on KILLED runs: interrupted (resumable) or the process ended without closing
TAG_RESTARTS = "restarts"  # how often this run was resumed after a failure or an interruption
TAG_STOPPED_EARLY = "stopped_early_at_epoch"  # ASHA (search) stopped the trial before its last epoch
TAG_GIT_DIRTY = "git_dirty"  # "true": the run's code differs from the commit in mlflow.source.git.commit
# NC intervention continuation runs (ncood.tune.intervention): which group, which source run and checkpoint
TAG_GROUP = "group"  # control | intervention (ncood.intervention.GROUPS)
TAG_SOURCE_RUN, TAG_SOURCE_CONDITION = "source_run_id", "source_condition"
TAG_ONSET, TAG_REQUESTED = "onset_epoch", "requested_epoch"  # the restored checkpoint's epoch, the one asked for
