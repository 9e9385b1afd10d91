"""The metric-key layout: one MLflow chart section per score across OoD sets, older stores still readable, the sweep
run's summary keys."""
from __future__ import annotations

import json

import pytest

from ncood import keys
from ncood.aggregate import summary


def test_ood_keys_group_a_score_across_sets():
    k = keys.ood_key("svhn", "gmm", "auroc")
    assert k == "auroc/gmm/svhn" and k.rsplit("/", 1)[0] == "auroc/gmm"  # MLflow's chart section: the prefix
    assert keys.parse_ood_key(k) == ("svhn", "gmm", "auroc")
    assert keys.parse_ood_key("ood/svhn/gmm/auroc") == ("svhn", "gmm", "auroc")  # stores from before the layout
    assert keys.canonical_key("ood/svhn/gmm/fpr95") == "fpr95/gmm/svhn"
    for other in (keys.ACC_TEST, keys.nc_key("nc1"), keys.GMM_JITTER, "vim/alpha", "system/cpu_utilization_percentage"):
        assert keys.parse_ood_key(other) is None and keys.canonical_key(other) == other


def test_summary_and_l2_effect_keys():
    base = keys.ood_key("photos", "gmm", "auroc")
    assert keys.summary_key("c", "mean", base) == "summary/c/mean/auroc/gmm/photos"
    assert keys.l2_effect_key("c", "ci_low", base) == "l2_effect/c/ci_low/auroc/gmm/photos"
    with pytest.raises(ValueError, match="expected one of"):
        keys.summary_key("c", "median", base)
    with pytest.raises(ValueError, match="expected one of"):
        keys.l2_effect_key("c", "p", base)


def test_headline_view_lists_the_logged_headline_in_order():
    base = {o: keys.ood_key(o, "gmm", "auroc") for o in ("photos", "noise")}
    metrics = {keys.l2_effect_key("l2", s, b): 0.1 for b in base.values() for s in keys.L2_EFFECT_STATS}
    metrics |= {keys.summary_key(c, s, b): 0.9 for c in ("nol2", "l2") for b in base.values() for s in ("mean", "min")}
    cols = summary.headline_columns(metrics, ["nol2", "l2"], ["photos", "noise"])
    assert cols[:3] == [keys.l2_effect_key("l2", s, base["photos"]) for s in keys.L2_EFFECT_STATS]
    assert set(cols) == set(metrics)  # nothing logged is left out, nothing absent is added
    view = json.loads(summary.headline_view(cols))
    assert view["selectedColumns"] == [f"metrics.`{k}`" for k in cols]
    assert view["columnOrder"][1:] == view["selectedColumns"]
    assert summary.headline_url("http://h:5000/", "7") == \
        "http://h:5000/#/experiments/7/runs?viewStateShareKey=ncood-headline"
