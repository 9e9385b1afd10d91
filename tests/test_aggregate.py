"""ncood.aggregate against a real MLflow store of known metric values (no Ray, no training).

The store holds two sweeps in one experiment, written through the MLflow API with ncood's schema (tags, params,
per-epoch metrics). The newest sweep has conditions with every seed, a FAILED seed, a seed that failed and was
re-run, a KILLED (incomplete) seed, a seed that never ran, a run lacking one metric entirely, a run whose metric stops
before the last epoch, a run logged out of step order, and a condition listed by the sweep that has no run at all.
Every table number is checked against numpy on the values the test itself generated.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from scipy import stats

from ncood import keys, tracking
from ncood.aggregate import (ROLE_AGGREGATE, TAG_SWEEP_RUN_ID, after_sweep, aggregate, bootstrap_diff_ci,
                             headline_lines, load_sweep, main,
                             welch_p)
from ncood.aggregate.report import FIGURES, TABLE_FORMATS
from ncood.aggregate.runs import CONDITION_FIELDS

EXP, EPOCHS, SEEDS = "agg-test", 3, (0, 1, 2)
OOD, SCORES = ("svhn", "cifar100"), ("gmm", "feature_norm")
A, B, C, D, E = ("resnet18-w8-nol2-e3", "resnet18-w8-l2-e3", "resnet18-w8-nol2-sn-e3", "resnet18-w8-l2-sn-e3",
                 "resnet18-w8-l2-lg-e3")
AXES = {A: (False, False), B: (True, False), C: (False, True), D: (True, True)}  # (l2, spectral_norm)
SVHN_GMM = keys.ood_key("svhn", "gmm", "auroc")
CUT_KEY = keys.ood_key("cifar100", "feature_norm", "fpr95")  # C seed 1 logs it at epochs 1-2 only
CLEAR = {A: [0.80, 0.81, 0.79], B: [0.94, None, 0.96]}  # final SVHN GMM AUROC; B seed 1 fails: true diff 0.15


def _all_keys() -> list[str]:
    out = [keys.LOSS_TRAIN, keys.ACC_TEST, keys.GMM_JITTER] + [keys.nc_key(m) for m in keys.NC_METRICS]
    return out + [keys.ood_key(o, s, m) for o in OOD for s in SCORES for m in keys.DETECTION_METRICS]


def _values(cond: str, seed: int, rng: np.random.Generator) -> dict[str, dict[int, float]]:
    """{key: {epoch: value}} of one run: NC metrics fall with the epoch, detection metrics in (0.5, 1)."""
    vals = {}
    for k in _all_keys():
        v = {e: float(rng.uniform(0.5, 1.0)) for e in range(1, EPOCHS + 1)}
        if k.startswith("nc/"):
            v = {e: float(rng.uniform(0.5, 2.0)) * 10.0 ** (-e) for e in v}
        vals[k] = v
    if cond in CLEAR and CLEAR[cond][seed] is not None:
        vals[SVHN_GMM][EPOCHS] = CLEAR[cond][seed]
    return vals


def _make_run(client, exp_id, parent_id, cond, seed, vals, status="FINISHED", epochs=EPOCHS, order=None,
              start=None, tags=None):
    l2, sn = AXES[cond]
    run = client.create_run(exp_id, run_name=f"{cond}-s{seed}", start_time=start, tags={
        MLFLOW_PARENT_RUN_ID: parent_id, keys.TAG_ROLE: "trial", keys.TAG_CONDITION: cond,
        keys.TAG_SEED: str(seed), **(tags or {})})
    params = {"arch": "resnet18", "width": 8, "l2": l2, "spectral_norm": sn, "leaky_gap": False, "epochs": EPOCHS,
              "seed": seed, "dataset": "cifar10", "ood_sets": ",".join(OOD), "lr": 0.1}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    ts = int(time.time() * 1000)
    for i, e in enumerate(order or range(1, epochs + 1)):
        metrics = [Metric(k, v[e], ts + i, e) for k, v in vals.items() if e in v]
        client.log_batch(run.info.run_id, metrics=metrics)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_store):
    """The store and the truth: {(condition, seed): {key: {epoch: value}}} for every run that is used."""
    root = tmp_path_factory.mktemp("agg")
    uri = new_store(root)
    exp_id = tracking.prepare_experiment(EXP, uri)
    client = MlflowClient(uri)
    rng = np.random.default_rng(123)
    t0 = int(time.time() * 1000) - 3_600_000
    # an older sweep (one run): the default must pick the newer one
    old = client.create_run(exp_id, run_name="old-sweep", start_time=t0,
                            tags={keys.TAG_ROLE: "sweep", keys.TAG_KIND: "ablation"})
    client.log_batch(old.info.run_id, params=[Param("seeds", "1"), Param("conditions", A)])
    _make_run(client, exp_id, old.info.run_id, A, 0, _values(A, 0, rng), start=t0 + 1)
    client.set_terminated(old.info.run_id, "FINISHED")

    parent = client.create_run(exp_id, run_name="new-sweep", start_time=t0 + 10,
                               tags={keys.TAG_ROLE: "sweep", keys.TAG_KIND: "ablation"})
    client.log_batch(parent.info.run_id, params=[Param("seeds", "3"), Param("conditions", ",".join([A, B, C, D, E]))])
    truth, pid = {}, parent.info.run_id
    for cond in (A, B, C, D):
        for seed in SEEDS:
            vals = _values(cond, seed, rng)
            if (cond, seed) == (B, 1):  # fails in epoch 2
                _make_run(client, exp_id, pid, cond, seed, vals, "FAILED", epochs=1,
                          tags={keys.TAG_ERROR: "RuntimeError: boom\n\nTraceback ..."})
                continue
            if (cond, seed) == (D, 1):  # killed after epoch 2: incomplete
                _make_run(client, exp_id, pid, cond, seed, vals, "KILLED", epochs=2)
                continue
            if (cond, seed) == (D, 2):  # never ran
                continue
            if (cond, seed) == (A, 1):  # failed once, then re-run to the end: used, listed as re-run
                _make_run(client, exp_id, pid, cond, seed, _values(cond, seed, rng), "FAILED", epochs=2,
                          tags={keys.TAG_ERROR: "OSError: node lost"})
            if (cond, seed) == (C, 2):
                del vals[SVHN_GMM]  # a run that lacks this metric
            if (cond, seed) == (C, 1):
                del vals[CUT_KEY][EPOCHS]  # logged, but not at the final epoch
            order = [3, 1, 2] if (cond, seed) == (A, 0) else None  # "latest" must mean the highest step
            _make_run(client, exp_id, pid, cond, seed, vals, order=order)
            truth[(cond, seed)] = vals
    client.set_terminated(pid, "FINISHED")
    return {"uri": uri, "exp_id": exp_id, "parent": pid, "old": old.info.run_id, "truth": truth, "root": root}


@pytest.fixture(scope="module")
def result(store):
    lines: list[str] = []
    res = aggregate(store["uri"], EXP, out=store["root"] / "out", resamples=2000, seed=0, echo=lines.append)
    return res, "\n".join(lines)


def final(truth, cond, key) -> np.ndarray:
    """Independent expectation: final-epoch values of `key` over the used seeds of `cond` (absent = excluded)."""
    return np.array([v[key][EPOCHS] for (c, _), v in sorted(truth.items()) if c == cond and EPOCHS in v.get(key, {})])


def _table(res, name):
    return next(t for t in res.tables if t.name == name)


def _frame(res, name) -> pd.DataFrame:
    return _table(res, name).numeric


def test_condition_fields_match_trial_config():
    from ncood.config import make_config

    base = make_config("digits", width=8, epochs=3)
    changed = {"arch": "resnet50", "width": 4, "l2": True, "spectral_norm": False, "leaky_gap": False, "epochs": 5,
               "etf_projector": True, "entropy_reg": 0.05, "loss": "nc", "label_smoothing": 0.1, "optimizer": "adamw",
               "schedule": "cosine", "logitnorm_temperature": 0.1}
    assert set(changed) == set(CONDITION_FIELDS)
    for f, v in changed.items():
        assert base.replace(**{f: v}).condition != base.condition or f == "logitnorm_temperature", f
    logitnorm = base.replace(loss="logitnorm")  # the temperature shows only where it is used
    assert logitnorm.replace(logitnorm_temperature=0.1).condition != logitnorm.condition
    assert base.replace(seed=3, lr=0.05, eval_every=2, batch_size=64).condition == base.condition


def test_sweep_selection_and_seed_report(store, result):
    res, printed = result
    data = res.data
    assert data.sweep.run_id == store["parent"] and data.conditions == [A, B, C, D, E]
    assert data.expected_seeds == [0, 1, 2] and data.ood_sets == list(OOD)
    assert sorted(zip(data.used["condition"], data.used["seed"])) == sorted(store["truth"])
    seeds = _frame(res, "seeds").set_index("condition")
    assert seeds.loc[A, "used"] == 3 and seeds.loc[A, "warning"] == "" and seeds.loc[A, "duplicate"] == "s1"
    assert seeds.loc[A, "failed"] == "" and seeds.loc[A, "errors"] == ""
    assert seeds.loc[B, "used"] == 2 and seeds.loc[B, "failed"] == "s1" and "boom" in seeds.loc[B, "errors"]
    assert seeds.loc[D, "used"] == 1 and seeds.loc[D, "incomplete"] == "s1" and seeds.loc[D, "missing"] == "s2"
    assert seeds.loc[E, "used"] == 0 and seeds.loc[E, "missing"] == "s0, s1, s2"
    for cond in (B, D, E):
        assert "only" in seeds.loc[cond, "warning"] and f"WARNING {cond}" in printed


def test_table1_every_number(store, result):
    res, _ = result
    t1 = _frame(res, "table1_ood")
    assert len(t1) == 5 * len(OOD) * len(SCORES)
    for row in t1.itertuples():
        for metric, key in (("auroc", keys.ood_key(row.ood_set, row.score, "auroc")),
                            ("fpr95", keys.ood_key(row.ood_set, row.score, "fpr95")), ("accuracy", keys.ACC_TEST)):
            v = final(store["truth"], row.condition, key)
            got = {s: getattr(row, f"{metric}_{s}") for s in ("n", "min", "max", "mean", "sd")}
            assert got["n"] == v.size, (row.condition, key)
            if v.size == 0:
                assert np.isnan(got["mean"])
                continue
            np.testing.assert_allclose([got["min"], got["max"], got["mean"]], [v.min(), v.max(), v.mean()])
            if v.size > 1:
                np.testing.assert_allclose(got["sd"], v.std(ddof=1))
    # the run without the metric is out of that cell only; the metric cut before the last epoch likewise
    row = t1[(t1.condition == C) & (t1.ood_set == "svhn") & (t1.score == "gmm")].iloc[0]
    assert row.auroc_n == 2 and row.fpr95_n == 3 and "metric missing in 1" in row.warning
    row = t1[(t1.condition == C) & (t1.ood_set == "cifar100") & (t1.score == "feature_norm")].iloc[0]
    assert row.fpr95_n == 2 and row.auroc_n == 3
    # A seed 0 was logged in step order 3, 1, 2: its final value is the epoch-3 one
    assert res.data.used.set_index(["condition", "seed"]).loc[(A, 0), SVHN_GMM] == 0.80
    # every fixture run logs gmm/jitter > 0: each condition with used runs is flagged under the table
    notes = next(t for t in res.tables if t.name == "table1_ood").notes
    jit = final(store["truth"], A, keys.GMM_JITTER)
    assert f"WARNING {A}: {jit.size} of {jit.size} final GMM fits needed jitter (up to {jit.max():g})" in " ".join(notes)
    assert not any(E in n for n in notes)  # no runs: nothing to flag


def test_table2_ablation(store, result):
    res, _ = result
    t2 = _frame(res, "table2_ablation")
    assert list(t2["condition"][:4]) == [A, B, C, D]  # SN off (no L2, L2), then SN on
    for row in t2.itertuples():
        for o in OOD:
            v = final(store["truth"], row.condition, keys.ood_key(o, "gmm", "auroc"))
            got = [getattr(row, f"auroc_{o}_{s}") for s in ("min", "max", "mean")]
            np.testing.assert_allclose(got, [v.min(), v.max(), v.mean()] if v.size else [np.nan] * 3)
        v = final(store["truth"], row.condition, keys.ACC_TEST)
        assert row.accuracy_n == v.size


def test_table3_nc(store, result):
    res, _ = result
    t3 = _frame(res, "table3_nc").set_index("condition")
    for cond in (A, B, C):
        for m in keys.NC_METRICS:
            v = final(store["truth"], cond, keys.nc_key(m))
            np.testing.assert_allclose([t3.loc[cond, f"{m}_mean"], t3.loc[cond, f"{m}_sd"]], [v.mean(), v.std(ddof=1)])
    assert t3.loc[D, "nc1_n"] == 1 and np.isnan(t3.loc[D, "nc1_sd"])


def test_table4_l2_effect(store, result):
    res, _ = result
    t4 = _frame(res, "table4_l2_effect")
    assert set(zip(t4["condition"], t4["twin"])) == {(B, A), (D, C)}
    for row in t4.itertuples():
        a, b = final(store["truth"], row.condition, row.key), final(store["truth"], row.twin, row.key)
        assert (row.n_l2, row.n_nol2) == (a.size, b.size)
        np.testing.assert_allclose([row.diff, row.worst_seed_gap], [a.mean() - b.mean(), a.min() - b.min()])
        if a.size > 1 and b.size > 1:
            np.testing.assert_allclose(row.p_welch, stats.ttest_ind(a, b, equal_var=False).pvalue)
            assert row.ci_low <= row.diff <= row.ci_high
        else:  # one seed in a group: no spread to measure, so neither a p-value nor an interval
            assert np.isnan(row.p_welch) and np.isnan(row.ci_low) and np.isnan(row.ci_high)
    clear = t4[(t4.condition == B) & (t4.key == SVHN_GMM)].iloc[0]
    assert clear.ci_low <= 0.15 <= clear.ci_high and clear.ci_low > 0.1  # clear effect: CI excludes 0
    np.testing.assert_allclose(clear["diff"], 0.15, atol=1e-12)
    np.testing.assert_allclose(clear.worst_seed_gap, 0.94 - 0.79)


def test_bootstrap_and_welch_helpers():
    rng = np.random.default_rng(7)
    noise = [rng.normal(0, sd, 15) for sd in (0.01, 0.02)]
    a, b = [m + z - z.mean() for m, z in zip((0.95, 0.90), noise)]  # a clear case: sample means 0.95 and 0.90
    lo, hi = bootstrap_diff_ci(a, b, resamples=10_000, seed=1)
    assert lo < 0.05 < hi and lo > 0  # contains the true difference, excludes 0
    assert (lo, hi) == bootstrap_diff_ci(a, b, resamples=10_000, seed=1)  # seeded
    ref = np.random.default_rng(99)  # an independent bootstrap: the same interval up to Monte-Carlo error
    diffs = [ref.choice(a, a.size).mean() - ref.choice(b, b.size).mean() for _ in range(4000)]
    np.testing.assert_allclose([lo, hi], np.quantile(diffs, [0.025, 0.975]), atol=2e-3)
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert np.isnan(welch_p(a[:1], b))


def test_files_figures_and_aggregate_run(store, result):
    res, printed = result
    names = [t.name for t in res.tables]
    for name in names:
        for fmt in TABLE_FORMATS:
            assert (res.out / "tables" / f"{name}.{fmt}").stat().st_size > 0
    assert "\\begin{tabular}" in (res.out / "tables" / "table3_nc.tex").read_text()
    assert "±" in (res.out / "tables" / "table3_nc.md").read_text() and "| condition" in printed
    for path in res.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from matplotlib.image import imread

        assert imread(path).shape[0] > 200
    client = MlflowClient(store["uri"])
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == store["exp_id"]
    assert run.data.tags[keys.TAG_ROLE] == ROLE_AGGREGATE and run.data.tags[TAG_SWEEP_RUN_ID] == store["parent"]
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == store["parent"]  # nested under the sweep in the UI
    assert run.data.metrics["pearson_r_nc2_auroc"] == pytest.approx(res.pearson_r, abs=1e-12)

    def walk(path=None):
        for f in client.list_artifacts(res.run_id, path):
            yield from walk(f.path) if f.is_dir else [f.path]

    artifacts = set(walk())
    assert {f"tables/{n}.{f}" for n in names for f in (*TABLE_FORMATS, "json")} <= artifacts
    assert {f"figures/{f}" for f in FIGURES.values()} <= artifacts and "report.md" in artifacts
    logged = json.loads(run.data.tags["mlflow.loggedArtifacts"])  # what the UI lists as tables
    assert {d["path"] for d in logged} == {f"tables/{n}.json" for n in names}
    # the figure (a) correlation is over every (run, epoch) with both metrics
    assert np.isfinite(res.pearson_r)


def test_script_with_parent_run_and_hook(store, tmp_path):
    out = tmp_path / "old"
    script = Path(__file__).resolve().parent.parent / "tune_jobs" / "aggregate.py"
    proc = subprocess.run([sys.executable, str(script), "--experiment", EXP, "--tracking-uri", store["uri"],
                           "--parent-run", store["old"], "--out", str(out), "--no-log-run", "--resamples", "200"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "old-sweep" in proc.stdout and "1 runs used of 1" in proc.stdout
    assert (out / "tables" / "table1_ood.csv").exists()
    assert main(["--experiment", "no-such-exp", "--tracking-uri", store["uri"]]) == 2
    # the ablation job's hook: never raises; reports and returns None on a bad sweep id
    assert after_sweep(tracking_uri=store["uri"], experiment_id=store["exp_id"], parent_run_id="0" * 32,
                       out=str(tmp_path / "x")) is None


def test_ncood_aggregate_subcommand(store, tmp_path, capsys):
    """`ncood aggregate` through the real CLI: the newest sweep of the experiment, tables written, no run logged."""
    from ncood.cli import main

    out = tmp_path / "cli"
    assert main(["aggregate", "--experiment", EXP, "--tracking-uri", store["uri"], "--out", str(out), "--no-log-run",
                 "--resamples", "200"]) == 0
    assert "old-sweep" not in capsys.readouterr().out and (out / "tables" / "table1_ood.csv").exists()
    assert main(["aggregate", "--experiment", "no-such-exp", "--tracking-uri", store["uri"]]) == 2
    assert "no MLflow experiment 'no-such-exp'" in capsys.readouterr().err


def test_default_folder_inside_a_ray_job_copy_outlives_the_job(tmp_path):
    """`ray job submit --working-dir` runs the job from Ray's temporary copy of the repo, deleted when the job ends;
    the report's default folder was in it (the printed "Full report" path vanished with the job). There it is
    ~/ray_results/aggregate/<experiment>, beside the Ray storage's default in a job (~/ray_results). The copy is made
    as Ray makes it: the package and pyproject.toml under .../runtime_resources/working_dir_files/_ray_pkg_<id>/."""
    import shutil

    from ncood.aggregate.report import default_out

    repo = Path(__file__).resolve().parent.parent
    assert default_out("abl x") == repo / "runs" / "aggregate" / "abl_x"  # a checkout: beside runs/ray
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0"
    shutil.copytree(repo / "ncood", copy / "ncood", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "pyproject.toml", copy)
    code = ("from ncood.aggregate.report import default_out; from ncood.tune.sweep import default_storage_path; "
            "print(default_out('abl x')); print(default_storage_path())")
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(copy)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out, storage = proc.stdout.split()
    assert (out, storage) == (str(home / "ray_results" / "aggregate" / "abl_x"), str(home / "ray_results"))


def test_sweep_run_carries_the_headline(store, result):
    """The sweep (parent) run: per-condition mean/min/sd of every score's AUROC per OoD set, accuracy and NC1 (checked
    against the truth), the L2 effects equal to Table 4's numbers for every score, and the experiment's description."""
    res, _ = result
    client = MlflowClient(store["uri"])
    metrics = client.get_run(store["parent"]).data.metrics
    assert metrics == pytest.approx(res.headline, abs=1e-12)
    for cond in (A, B, C, D):
        for base in [keys.ACC_TEST, keys.nc_key("nc1")] + [keys.ood_key(o, s, "auroc") for o in OOD for s in SCORES]:
            v = final(store["truth"], cond, base)
            assert metrics[keys.summary_key(cond, "mean", base)] == pytest.approx(v.mean(), abs=1e-12)
            assert metrics[keys.summary_key(cond, "min", base)] == pytest.approx(v.min(), abs=1e-12)
            if v.size > 1:
                assert metrics[keys.summary_key(cond, "sd", base)] == pytest.approx(v.std(ddof=1), abs=1e-12)
            else:  # one seed (D): no sd, and no NaN cell either
                assert keys.summary_key(cond, "sd", base) not in metrics
    assert not any("fpr95" in k for k in metrics)  # AUROC only: the headline, not every detection metric
    t4 = _frame(res, "table4_l2_effect")
    gmm = t4[t4["key"] == SVHN_GMM].iloc[0]  # B vs its twin A (Table 4 is the GMM's)
    for stat in keys.L2_EFFECT_STATS:
        assert metrics[keys.l2_effect_key(gmm["condition"], stat, SVHN_GMM)] == pytest.approx(gmm[stat], abs=1e-12)
    fn = keys.ood_key("svhn", "feature_norm", "auroc")  # a second score gets its L2 effect too
    lo, hi = bootstrap_diff_ci(final(store["truth"], B, fn), final(store["truth"], A, fn), 2000, 0)
    assert (metrics[keys.l2_effect_key(B, "ci_low", fn)], metrics[keys.l2_effect_key(B, "ci_high", fn)]) == \
        pytest.approx((lo, hi), abs=1e-12)
    one_seed = keys.ood_key("svhn", "gmm", "auroc")  # D (one seed) vs C: a difference, but no interval to log
    assert keys.l2_effect_key(D, "diff", one_seed) in metrics and keys.l2_effect_key(D, "ci_low", one_seed) not in metrics
    assert any("fewer than 2 seeds" in n for n in _table(res, "table4_l2_effect").notes)
    lines = headline_lines(metrics, [A, B, C, D], OOD)
    assert any(line.startswith(f"  L2 effect {D}") and "no 95% CI: fewer than 2 seeds" in line for line in lines)
    assert any(line.startswith(f"  L2 effect {B}") and "(95% CI [" in line for line in lines)
    assert "L2 effect" in client.get_run(store["parent"]).data.tags["mlflow.note.content"]  # the run's description
    note = client.get_experiment(store["exp_id"]).tags["mlflow.note.content"]
    assert "new-sweep" in note and all(c in note for c in (A, B, C, D)) and "l2_effect/" in note


def test_older_key_layout_reads_the_same(tmp_store):
    """A store written before the <metric>/<score>/<set> layout (ood/<set>/<score>/<metric>) aggregates unchanged;
    MLflow's system metrics (steps = samples, here more samples than epochs) do not make a run look incomplete."""
    uri = tmp_store
    exp_id = tracking.prepare_experiment("old-layout", uri)
    client = MlflowClient(uri)
    parent = client.create_run(exp_id, run_name="sweep", tags={keys.TAG_ROLE: "sweep"})
    client.log_batch(parent.info.run_id, params=[Param("seeds", "1"), Param("conditions", A)])
    rid = _make_run(client, exp_id, parent.info.run_id, A, 0, {"ood/svhn/gmm/auroc": {e: 0.5 + e / 10 for e in (1, 2, 3)},
                                                                keys.ACC_TEST: {e: 0.9 for e in (1, 2, 3)}})
    client.log_metric(rid, keys.SYSTEM_PREFIX + "cpu_utilization_percentage", 50.0, step=7)
    data = load_sweep(uri, "old-layout")
    assert data.used[SVHN_GMM].tolist() == [pytest.approx(0.8)]
