"""The metric-key schema: the one place that names every logged number.

Tracking (MLflow), aggregation and serving import these names; nothing else spells a metric key by hand.
Keys are flat strings with '/' namespaces. MLflow 3's chart view puts every key into the section named by its
prefix up to the last '/', so the last component is what varies inside one section:

    loss/train, accuracy/train, accuracy/val, accuracy/test, lr, time/epoch_s, time/eval_s
    nc/<nc metric>                  e.g. nc/nc1, nc/nc2_equiangular_means      (train-set features)
    <metric>/<score>/<ood set>      e.g. auroc/gmm/svhn, fpr95/feature_norm/photos: section `auroc/gmm` shows the
                                    GMM's AUROC on every OoD set, one chart each
    <score>/<fit diagnostic>        what a score's fit on the train features chose, e.g. gmm/jitter (the eps*I
                                    added to every class covariance, 0 when none was needed), vim/alpha
Sweep (parent) run, written by the aggregation (ncood.aggregate.summary), one value per sweep:
    summary/<condition>/<stat>/<base key>   stat in mean|min|sd over the condition's seeds, e.g.
                                            summary/resnet18-w8-l2-sn-lg-e15/mean/auroc/gmm/photos
    l2_effect/<L2 condition>/<stat>/<base key>   stat in diff|ci_low|ci_high: mean(L2) - mean(its L2-off twin) and
                                            its 95% bootstrap interval (ncood.aggregate.tables.l2_effect_table)
Older stores (ncood before this layout) used ood/<ood set>/<score>/<metric>; parse_ood_key reads both and
canonical_key maps the old spelling to the new one, so aggregation and registration read old stores unchanged.
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

# NC metric names returned by ncood.collapse.nc_metrics (docs/method.md#nc-metrics).
NC_METRICS = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equinorm_classifier",
    "nc2_equiangular_means",
    "nc2_equiangular_classifier",
    "nc2_etf_distance",
    "nc3_self_duality",
    "nc4_ncc_error",
    "nc4_ncc_mismatch",
)
# The seed paper's Table 3 columns, in its order (NC1, EA means, EA class, EN means, EN class, NC3, NC4); its NC4 is
# the NCC error against the labels (Sec. 3.2: "the proportion of training set samples that are misclassified").
SEED_TABLE3_NC = ("nc1", "nc2_equiangular_means", "nc2_equiangular_classifier", "nc2_equinorm_means",
                  "nc2_equinorm_classifier", "nc3_self_duality", "nc4_ncc_error")
# The NC table's column order: the seed paper's Table 3 first, then the metrics it does not report.
NC_TABLE_ORDER = (*SEED_TABLE3_NC, *(m for m in NC_METRICS if m not in SEED_TABLE3_NC))
# Detection metrics returned by ncood.ood.detection_metrics (docs/method.md#detection). fpr95 is the papers' FPR95
# (OoD accepted at 95% ID accepted); fpr95_id_rejected is OpenOOD's number of the same name (ID rejected at 95% OoD
# caught): see ncood/ood/metrics.py.
DETECTION_METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out", "fpr95_id_rejected")
# Top-level key namespaces: no OoD score may be named like one (its fit diagnostics would land among them).
NAMESPACES = ("loss", "accuracy", "lr", "time", "nc", "ood", "score", "summary", "l2_effect", *DETECTION_METRICS)
SUMMARY_STATS = ("mean", "min", "sd")  # over a condition's seeds (sd: sample sd, ddof=1)
L2_EFFECT_STATS = ("diff", "ci_low", "ci_high")


def nc_key(metric: str) -> str:
    """'nc1' -> 'nc/nc1'."""
    return f"nc/{metric}"


def ood_key(ood_set: str, score: str, metric: str) -> str:
    """('svhn', 'gmm', 'auroc') -> 'auroc/gmm/svhn'."""
    return f"{metric}/{score}/{ood_set}"


def summary_key(condition: str, stat: str, base: str) -> str:
    """('resnet18-w8-l2-e15', 'mean', 'auroc/gmm/svhn') -> 'summary/resnet18-w8-l2-e15/mean/auroc/gmm/svhn'."""
    if stat not in SUMMARY_STATS:
        raise ValueError(f"summary stat {stat!r}: expected one of {SUMMARY_STATS}")
    return f"summary/{condition}/{stat}/{base}"


def l2_effect_key(condition: str, stat: str, base: str) -> str:
    """('resnet18-w8-l2-e15', 'diff', 'auroc/gmm/svhn') -> 'l2_effect/resnet18-w8-l2-e15/diff/auroc/gmm/svhn'."""
    if stat not in L2_EFFECT_STATS:
        raise ValueError(f"L2 effect stat {stat!r}: expected one of {L2_EFFECT_STATS}")
    return f"l2_effect/{condition}/{stat}/{base}"


def fit_key(score: str, name: str) -> str:
    """('vim', 'alpha') -> 'vim/alpha': a number a score's fit chose (a metric, logged at every evaluation)."""
    return f"{score}/{name}"


# MLflow's SystemMetricsMonitor logs system/<name> (ncood.run_fields), at its own steps (sample index, not epoch).
SYSTEM_PREFIX = "system/"

GMM_JITTER = fit_key("gmm", "jitter")
GMM_DEGENERATE_DIMS = fit_key("gmm", "degenerate_dims")


def score_param_key(score: str, name: str) -> str:
    """('knn', 'k') -> 'score/knn/k': a score's hyperparameter, logged once per run as an MLflow param."""
    return f"score/{score}/{name}"


def parse_ood_key(key: str) -> tuple[str, str, str] | None:
    """Inverse of ood_key: 'auroc/gmm/svhn' -> ('svhn', 'gmm', 'auroc'); the older layout 'ood/svhn/gmm/auroc'
    reads the same; None for other keys."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] in DETECTION_METRICS:
        return parts[2], parts[1], parts[0]
    if len(parts) == 4 and parts[0] == "ood" and parts[3] in DETECTION_METRICS:  # stores written before the layout
        return parts[1], parts[2], parts[3]
    return None


# ---- run tags, roles and kinds ---------------------------------------------------------------------------------------
DEFAULT_EXPERIMENT = "ablation-default"  # the MLflow experiment of tune_jobs/ablation.py without flags (and of the
# commands that read it: ncood aggregate, ncood register)
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
SCORER_NAME = "ood_scorer"  # the LoggedModel every trial run logs (ncood.serve.package) and `ncood register` finds
# TrialConfig fields that say where a trial ran, not what it ran: logged as tags, not params (runs compare on params)
MACHINE_FIELDS = ("data_root", "download", "device")


def canonical_key(key: str) -> str:
    """The current spelling of a metric key: 'ood/svhn/gmm/auroc' (older stores) -> 'auroc/gmm/svhn'; others as is."""
    parsed = parse_ood_key(key)
    return ood_key(*parsed) if parsed else key
