"""OoD detection metrics from per-image scores (seed paper Table 1; TMLR 2024 "Exploring Simple, High Quality OoD
Detection with L2 Normalization", Table 2; OpenOOD v1.5 for the last one).

In-distribution (ID) images are the positive class and a higher score means "more ID".

    auroc     P(s_id > s_ood) + P(s_id = s_ood)/2       (= sklearn.metrics.roc_auc_score; ties count half)
    fpr95     FPR95 as the TMLR 2024 tables report it (the paper does not define it; this is the usual FPR at 95%
              TPR with ID positive): the fraction of OoD images ACCEPTED (s >= t) at the threshold t that accepts 95%
              of ID images: t = the largest t with mean(s_id >= t) >= 0.95, i.e. the k-th largest ID score with
              k = ceil(0.95 n_id) (exact integer arithmetic). Ties at t are accepted on both sides.
    aupr_in   average precision with ID positive, ranked by s       (= sklearn average_precision_score)
    aupr_out  average precision with OoD positive, ranked by -s
    fpr95_id_rejected
              OPENOOD'S "FPR@95" (openood/evaluators/metrics.py, auc_and_fpr_recall), which OpenOOD and pytorch-ood
              print under the same name as fpr95 but which is the reverse convention: OoD is the positive class,
              ranked by -s, and the number is the fraction of ID images REJECTED (s <= t) at the threshold that
              catches 95% of OoD images: t = the smallest score with mean(s_ood <= t) >= 0.95, ties at t rejected
              on both sides. Bit for bit OpenOOD's value: its sklearn roc_curve drops "collinear" thresholds
              (drop_intermediate), which moves t up a tie group only where three consecutive tie groups hold the
              same numbers of ID and OoD images; that rule is applied here too.

fpr95 and fpr95_id_rejected differ in general (ncood's Mahalanobis 0.203 vs pytorch-ood's 0.120 on one logged
scorer, issue 15): compare a number with a paper's only under the same name.

All ranking metrics come from two sorts of the pooled scores (tie groups -> cumulative TP/FP counts, one for each
orientation). sklearn's functions give the same numbers (tests/test_ood_metrics.py checks them against sklearn to
1e-12), but their input validation costs ~2 ms a call: 3 calls x (sets x scores) made them half of a digits
evaluation.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["detection_metrics", "fpr_at_tpr", "threshold_at_tpr"]


def _as_numpy(scores, which: str) -> np.ndarray:
    """Tensor / array-like -> 1-D float64 numpy; raises on empty or non-finite input."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{which} scores are empty")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{bad} of {arr.size} {which} scores are non-finite")
    return arr


def threshold_at_tpr(id_scores: np.ndarray, tpr_percent: int = 95) -> float:
    """The largest t with mean(id_scores >= t) >= tpr_percent/100: the k-th largest ID score, k = ceil(tpr * n).

    Integer arithmetic avoids float rounding of tpr * n. Ties at t are accepted. The serving threshold (95% of
    ID validation images accepted) and FPR95 both use this one definition.
    """
    s = _as_numpy(id_scores, "id")
    n = s.size
    k = (tpr_percent * n + 99) // 100  # ceil(tpr_percent * n / 100): 100 * k >= tpr_percent * n
    return float(np.sort(s)[n - k])


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr_percent: int = 95) -> float:
    """Fraction of OoD with score >= t, t = threshold_at_tpr(id_scores, tpr_percent)."""
    return float(np.mean(np.asarray(ood_scores) >= threshold_at_tpr(id_scores, tpr_percent)))


def _tie_group_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (TP, FP) at each distinct threshold, highest first, with a leading (0, 0): shapes (G+1,)."""
    s = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-s, kind="stable")
    s, is_pos = s[order], is_pos[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of every tie group
    tp = np.r_[0, np.cumsum(is_pos)[ends]]
    fp = np.r_[0, (ends + 1) - tp[1:]]
    return tp, fp


def _auroc_and_ap(tp: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """AUROC (trapezoids over tie groups == ties count half) and average precision sum_k (R_k - R_k-1) P_k from the
    cumulative counts of _tie_group_counts (shapes (G+1,), leading zeros)."""
    n_pos, n_neg = tp[-1], fp[-1]
    auroc = float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])) / (2.0 * n_pos * n_neg))
    precision = tp[1:] / (tp[1:] + fp[1:])
    ap = float(np.sum(np.diff(tp) / n_pos * precision))
    return auroc, ap


def _fpr_at_recall_openood(tp: np.ndarray, fp: np.ndarray, recall: float = 0.95) -> float:
    """OpenOOD's FPR: fpr at the first ROC point with tpr >= recall, the ROC thinned as sklearn's roc_curve does.

    tp, fp (G+1,) from _tie_group_counts with OoD as the positive class. sklearn thins the curve before it prepends
    the (0, 0) point (drop_intermediate: a point whose second differences are 0 in both fp and tp is dropped), then
    divides by the totals; the comparison tpr >= recall is made in float64, as there.
    """
    tp, fp = tp[1:], fp[1:]
    if tp.size > 2:
        keep = np.r_[True, (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), True]
        tp, fp = tp[keep], fp[keep]
    tpr = np.r_[0, tp] / tp[-1]
    fpr = np.r_[0, fp] / fp[-1]
    return float(fpr[np.argmax(tpr >= recall)])


def detection_metrics(id_scores, ood_scores) -> dict[str, float]:
    """{'auroc', 'fpr95', 'aupr_in', 'aupr_out', 'fpr95_id_rejected'} for ID (positive) vs OoD scores; higher score
    = more ID. fpr95 is the papers' convention, fpr95_id_rejected OpenOOD's (module docstring)."""
    s_id = _as_numpy(id_scores, "id")
    s_ood = _as_numpy(ood_scores, "ood")
    auroc, aupr_in = _auroc_and_ap(*_tie_group_counts(s_id, s_ood))
    tp_out, fp_out = _tie_group_counts(-s_ood, -s_id)  # OoD positive, ranked by -score
    _, aupr_out = _auroc_and_ap(tp_out, fp_out)
    return {"auroc": auroc, "fpr95": fpr_at_tpr(s_id, s_ood, 95), "aupr_in": aupr_in, "aupr_out": aupr_out,
            "fpr95_id_rejected": _fpr_at_recall_openood(tp_out, fp_out, 0.95)}
