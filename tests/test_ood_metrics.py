"""Detection metrics (ncood/ood/metrics.py) against sklearn, explicit counts and OpenOOD's auc_and_fpr_recall: AUROC,
AUPR in/out, the papers' FPR95 (OoD accepted at the threshold keeping 95% of ID) and OpenOOD's convention."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ncood import keys
from ncood.ood import detection_metrics

def explicit_fpr95(id_s, ood_s):
    """Largest threshold t with at least 95% of ID scores >= t, by trying every distinct value."""
    best = None
    for t in sorted(set(id_s.tolist())):
        if 100 * np.sum(id_s >= t) >= 95 * id_s.size:
            best = t
    return np.mean(ood_s >= best)


@pytest.mark.parametrize("seed", range(5))
def test_detection_metrics_with_ties(seed):
    rng = np.random.default_rng(seed)
    id_s = rng.integers(0, 12, size=int(rng.integers(20, 400))).astype(float)  # many ties
    ood_s = rng.integers(-3, 9, size=int(rng.integers(20, 400))).astype(float)
    m = detection_metrics(torch.tensor(id_s), ood_s)
    assert set(m) == set(keys.DETECTION_METRICS)
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert m["aupr_in"] == pytest.approx(average_precision_score(y, np.r_[id_s, ood_s]), abs=1e-12)
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - y, -np.r_[id_s, ood_s]), abs=1e-12)
    # ties count half: the exact rank formula
    pairs = (id_s[:, None] > ood_s[None, :]).mean() + 0.5 * (id_s[:, None] == ood_s[None, :]).mean()
    assert m["auroc"] == pytest.approx(pairs, abs=1e-12)
    assert m["fpr95"] == pytest.approx(explicit_fpr95(id_s, ood_s), abs=1e-15)
    swapped = detection_metrics(ood_s, id_s)
    assert swapped["auroc"] == pytest.approx(1 - m["auroc"], abs=1e-12)
    assert swapped["aupr_in"] == pytest.approx(detection_metrics(-id_s, -ood_s)["aupr_out"], abs=1e-12)


def test_fpr95_threshold_exact_at_boundary():
    id_s = np.arange(1, 21, dtype=float)  # 20 ID scores: 95% = 19 accepted -> t = 2
    ood_s = np.array([1.0, 2.0, 2.0, 3.0])
    assert detection_metrics(id_s, ood_s)["fpr95"] == 0.75  # 2, 2, 3 accepted; 1 rejected


def test_perfect_separation_and_bad_input():
    m = detection_metrics(np.linspace(5, 6, 100), np.linspace(0, 1, 50))
    assert m == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95_id_rejected": 0.0}
    with pytest.raises(ValueError, match=r"1 of 3 ood scores are non-finite"):
        detection_metrics([1.0, 2.0], [0.0, float("nan"), 1.0])
    with pytest.raises(ValueError, match=r"2 of 2 id scores are non-finite"):
        detection_metrics(torch.tensor([float("inf"), float("-inf")]), [0.0])
    with pytest.raises(ValueError, match="empty"):
        detection_metrics([], [1.0])




def openood_fpr(id_s, ood_s, tpr_th=0.95):
    """OpenOOD's FPR@95, a transcription of openood/evaluators/metrics.py auc_and_fpr_recall (Jingkang50/OpenOOD at
    3c35632, lines 40-49): conf = the scores (ID higher), label -1 marks OoD; OoD is the positive class, ranked by
    -conf; the FPR at the first ROC point whose TPR reaches tpr_th."""
    conf = np.r_[id_s, ood_s]
    label = np.r_[np.zeros(id_s.size), -np.ones(ood_s.size)]
    ood_indicator = np.zeros_like(label)
    ood_indicator[label == -1] = 1
    fpr_list, tpr_list, _ = roc_curve(ood_indicator, -conf)
    return fpr_list[np.argmax(tpr_list >= tpr_th)]


@pytest.mark.parametrize("seed", range(8))
def test_fpr95_id_rejected_is_openoods_fpr(seed):
    rng = np.random.default_rng(seed)
    n_id, n_ood = (int(v) for v in rng.integers(20, 500, size=2))
    if seed % 2:  # many ties
        id_s, ood_s = rng.integers(0, 15, n_id).astype(float), rng.integers(-4, 10, n_ood).astype(float)
    else:
        id_s, ood_s = rng.normal(1, 1, n_id), rng.normal(0, 1.5, n_ood)
    m = detection_metrics(id_s, ood_s)
    assert m["fpr95_id_rejected"] == openood_fpr(id_s, ood_s)
    # what it means: the smallest t with >= 95% of OoD scored <= t, and the ID share rejected there (s <= t)
    t = min(v for v in np.unique(ood_s) if 100 * np.sum(ood_s <= v) >= 95 * n_ood)
    if seed % 2 == 0:  # no ties, so sklearn's drop_intermediate cannot move the point
        assert m["fpr95_id_rejected"] == pytest.approx(np.mean(id_s <= t), abs=1e-15)


def test_fpr95_id_rejected_follows_sklearns_collinear_thinning():
    """20 tie groups holding one ID and one OoD image each: a straight ROC. The exact rule gives 19/20; OpenOOD's
    roc_curve keeps only the end points of the straight run, so OpenOOD reports 1.0, and so does ncood."""
    s = np.arange(20, dtype=float)
    m = detection_metrics(s, s)
    assert m["fpr95_id_rejected"] == openood_fpr(s, s) == 1.0
    assert m["fpr95"] == 0.95  # the papers' number: no thinning, t = 1 accepts 19 of 20 OoD


def test_the_two_fpr95_conventions_differ():
    id_s = np.r_[np.linspace(5, 10, 95), np.linspace(-10, -5, 5)]  # 5% of ID far in the OoD range
    ood_s = np.r_[np.linspace(-9, 0, 90), np.linspace(6, 7, 10)]  # 10% of OoD inside the ID range
    m = detection_metrics(id_s, ood_s)
    assert m["fpr95"] == pytest.approx(0.10)  # t = 5.0 accepts 95 ID; the 10 OoD at 6-7 pass
    t = np.sort(ood_s)[94]  # 95 of 100 OoD scored <= t = 6.44: ID rejected are the 5 far ones and those <= t
    assert m["fpr95_id_rejected"] == pytest.approx(np.mean(id_s <= t)) == pytest.approx(0.33)
    assert m["fpr95_id_rejected"] == openood_fpr(id_s, ood_s)
