"""The papers' published numbers (ncood.published) and their place beside measured ones in the aggregation: the
transcription's internal consistency, the matching rule, and a real sqlite MLflow store whose runs ran published
conditions (written through ncood.tracking, as trials write them) aggregated into a report that shows both."""
from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ncood import keys, tracking
from ncood.aggregate import aggregate
from ncood.config import make_config
from ncood.published import PAPERS, PUBLISHED, REQUIRED_FIELDS, PublishedResult, matches
from ncood.ood import SCORES

L2_60 = make_config("cifar10", l2=True)  # the papers' ResNet18 L2 60 (SN + leaky/GAP, batch 1024)
SVHN_GMM = keys.ood_key("svhn", "gmm", "auroc")


def _rows(**where) -> list[PublishedResult]:
    return [r for r in PUBLISHED if all(getattr(r, k) == v for k, v in where.items())]


def _one(**where) -> PublishedResult:
    (row,) = _rows(**where)
    return row


def test_transcription_is_consistent():
    # seed paper Table 2 rows 7/8 (SN + leaky/GAP, L2 off/on) are Table 1's "No L2 60" / "L2 60" (same models)
    for l2, label in ((False, "ResNet18 No L2 60"), (True, "ResNet18 L2 60")):
        t1 = [r for r in _rows(paper="seed", table="Table 1", row=label) if r.key in (SVHN_GMM, keys.ACC_TEST)]
        t2 = [r for r in _rows(paper="seed", table="Table 2") if r.condition["l2"] == l2
              and r.condition["spectral_norm"] and r.condition["leaky_gap"]]
        assert sorted((r.key, r.min, r.max, r.mean) for r in t1) == sorted((r.key, r.min, r.max, r.mean) for r in t2)
    # the headline numbers of docs/method.md#published, spot-checked
    assert _one(paper="seed", table="Table 1", row="ResNet18 No L2 350", ood_set="svhn").mean == 0.915
    nc1 = _rows(paper="seed", table="Table 3", metric="nc1")
    assert {(r.condition["spectral_norm"], r.condition["leaky_gap"], r.condition["l2"]): r.mean for r in nc1}[
        (True, True, False)] == 2.690
    tmlr = _one(paper="tmlr", table="Table 3", score="feature_norm", ood_set="svhn", metric="fpr95")
    assert (tmlr.min, tmlr.max, tmlr.mean) == (0.0693, 0.235, 0.148)
    assert len(_rows(paper="seed", table="Table 1")) == 6 * 4 and len(_rows(paper="seed", table="Table 3")) == 8 * 7
    for r in PUBLISHED:
        assert r.paper in PAPERS and r.key  # every row names a metric key of ncood.keys
        lo, hi = (r.min if r.min is not None else r.mean), (r.max if r.max is not None else r.mean)
        assert lo <= r.mean <= hi, r
        if r.metric in ("auroc", "fpr95", "accuracy"):
            assert 0 <= lo and hi <= 1, r  # fractions, as ncood logs them (TMLR's percent divided by 100)
        if r.metric in ("auroc", "fpr95"):
            assert keys.parse_ood_key(r.key) == (r.ood_set, r.score, r.metric)
            # a score ncood computes (TMLR Table 2's scaled softmax is published but deliberately not computed)
            assert r.score in SCORES or r.score == "msp_scaled", r
    assert {r.score for r in _rows(paper="tmlr", table="Table 3")} == {"feature_norm", "raw_logit_norm", "raw_max_logit"}


def test_matching_rule():
    fields = L2_60.to_dict()
    hits = [r for r in PUBLISHED if matches(r, fields)]
    assert {(r.paper, r.table) for r in hits} == {("seed", "Table 1"), ("seed", "Table 2"), ("seed", "Table 3"),
                                                  ("tmlr", "Table 2"), ("tmlr", "Table 3"), ("tmlr", "Table 4"),
                                                  ("tmlr", "Table 8")}
    assert all(r.condition["l2"] and r.condition["epochs"] == 60 for r in hits)
    for change in ({"batch_size": 512}, {"width": 8}, {"label_smoothing": 0.1}, {"spectral_norm": False},
                   {"dataset": "digits"}, {"epochs": 61}):
        assert not any(matches(r, {**fields, **change}) for r in hits), change
    row = hits[0]
    assert not matches(row, {k: v for k, v in fields.items() if k != "batch_size"})  # a field the run lacks
    vgg = _one(paper="tmlr", table="Table 4", row="VGG16 L2", ood_set="svhn", metric="auroc")
    assert vgg.condition["spectral_norm"] is None  # not stated by TMLR for VGG: any value matches
    vgg_fields = make_config("cifar10", arch="vgg16", l2=True).to_dict()
    assert matches(vgg, vgg_fields) and matches(vgg, {**vgg_fields, "spectral_norm": False})
    unknown = _one(paper="tmlr", table="Table 4", row="VGG16 No L2", ood_set="svhn", metric="auroc")
    assert any(unknown.condition.get(f) is None for f in REQUIRED_FIELDS)  # epochs not stated: never matched
    assert not matches(unknown, {**vgg_fields, "l2": False, "epochs": 60})


@pytest.fixture(scope="module")
def compared(tmp_path_factory, new_store):
    """A sweep of three conditions written as trials write them: the papers' ResNet18 L2 60 (3 seeds, GMM SVHN AUROC
    around the published mean), its No-L2 twin (3 seeds, far below it) and an L2 60 network of width 32 (no paper
    ran that: no comparison)."""
    root = tmp_path_factory.mktemp("published")
    uri = new_store(root)
    exp_id = tracking.prepare_experiment("published", uri)
    conds = {L2_60: [0.930, 0.940, 0.950], L2_60.replace(l2=False): [0.70, 0.71, 0.72],
             L2_60.replace(width=32): [0.90, 0.91, 0.92]}
    ref = tracking.start_sweep(uri, exp_id, "sweep", {"seeds": 3, "conditions": ",".join(c.condition for c in conds)},
                               {keys.TAG_KIND: "ablation"})
    for cfg, aurocs in conds.items():
        for seed, auroc in enumerate(aurocs):
            run = cfg.replace(seed=seed, epochs=60)
            tracker = tracking.TrialTracker(ref, run, f"{run.condition}-{seed}", f"{run.condition}-s{seed}")
            tracker.start()
            tracker.log_epoch(60, {SVHN_GMM: auroc, keys.ACC_TEST: 0.92 + 0.001 * seed,
                                   keys.ood_key("svhn", "feature_norm", "auroc"): 0.97})
            tracker.finish()
    tracking.set_status(ref, ref.parent_run_id, tracking.FINISHED)
    lines: list[str] = []
    res = aggregate(uri, "published", out=root / "out", resamples=200, echo=lines.append)
    return res, "\n".join(lines), uri


def test_report_shows_published_beside_measured(compared):
    res, printed, uri = compared
    table = next(t for t in res.tables if t.name == "published")
    df = table.numeric
    assert set(df["condition"]) == {L2_60.condition, L2_60.replace(l2=False).condition}  # width 32: no paper row
    row = df[(df["condition"] == L2_60.condition) & (df["key"] == SVHN_GMM)]
    assert list(row["tables"]) == ["Table 1, Table 2"]  # the same numbers in two tables (SD in Table 1): one row
    row = row.iloc[0]
    assert (row.published_min, row.published_max, row.published_mean, row.published_sd) == (0.924, 0.961, 0.938, 0.010)
    np.testing.assert_allclose([row["min"], row["max"], row["mean"], row["sd"]], [0.93, 0.95, 0.94, 0.01])
    assert row.n == 3 and row.published_mean_within_1sd == "yes"  # 0.938 in 0.94 +- 0.01
    twin = df[(df["condition"] == L2_60.replace(l2=False).condition) & (df["key"] == SVHN_GMM)].iloc[0]
    assert twin.published_mean == 0.912 and twin.published_mean_within_1sd == "no"  # 0.912 not in 0.71 +- 0.01
    norm = df[(df["condition"] == L2_60.condition) & (df["key"] == keys.ood_key("svhn", "feature_norm", "auroc"))]
    assert list(norm["tables"]) == ["Table 2, Table 3, Table 4, Table 8"] and norm.iloc[0].published_mean == 0.974
    assert norm.iloc[0].published_mean_within_1sd == "no"  # three equal values: SD 0, 0.97 != 0.974
    missing = df[(df["condition"] == L2_60.condition) & (df["key"] == keys.nc_key("nc1"))].iloc[0]
    assert missing.n == 0 and missing.published_mean_within_1sd == "–"  # NC not logged here: shown, not compared
    report = (res.out / "report.md").read_text()
    assert "Published (the papers) vs measured" in report and "0.924 / 0.961 / 0.938 ± 0.010" in report
    assert "0.940 ± 0.010" in report and PAPERS["seed"] in report
    assert "Published (the papers) vs measured" in printed
    client = MlflowClient(uri)
    run = client.get_run(res.run_id)
    assert int(run.data.params["published_compared"]) == len(df) and int(run.data.params["published_within_1sd"]) >= 1
    logged = {d["path"] for d in json.loads(run.data.tags["mlflow.loggedArtifacts"])}
    assert "tables/published.json" in logged
    files = {f.path for f in client.list_artifacts(res.run_id, "tables")}
    assert {"tables/published.md", "tables/published.csv"} <= files


def test_no_match_says_so(tmp_path):
    from ncood.aggregate.papers import published_table
    import pandas as pd

    runs = pd.DataFrame([{"condition": "c", **make_config("digits").to_dict(), "seed": 0, "use": "used"}])
    table = published_table(runs, runs, ["c"], 1)
    assert not len(table.display) and "No condition of this sweep ran a published condition" in table.notes[0]
