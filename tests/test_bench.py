"""The benchmarks in bench/ run end to end at tiny sizes and their JSON says the compared results agree.

No timing assertions: a shared CI machine makes speed ratios meaningless; bench/README.md records the figures.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_env() -> dict[str, str]:
    """This environment without NCOOD_BENCH_KEEP: a smoke run that succeeds removes its scratch folder."""
    return {k: v for k, v in os.environ.items() if k != "NCOOD_BENCH_KEEP"}


def run_json(script: str, *args: str, timeout: float = 120) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--json", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=BENCH.parent, env=bench_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # the JSON object is the last line


def test_measure_smoke_results_agree():
    out = run_json("measure.py")
    assert out["benchmark"] == "measure" and {"device", "torch"} <= set(out["env"])
    assert [r["d"] for r in out["runs"]] == [16, 48]
    for row in out["runs"]:
        for what in ("nc", "gaussian"):
            r = row[what]
            assert r["speedup"] > 0 and set(r["time"]) == {"ncood", "reference"}
            assert r["max_rel_diff"] < 1e-6, (row["d"], what, r["max_rel_diff"])
        assert set(row["nc"]["values"]["ncood"]) == set(row["nc"]["values"]["reference"])
        assert all(eps == row["gaussian"]["jitter_ncood"] for eps in row["gaussian"]["jitter_reference"])


def test_train_smoke_loops_agree():
    out = run_json("train.py", "--device", "cpu")
    assert out["benchmark"] == "train" and out["env"]["device_type"] == "cpu"
    (row,) = out["runs"]
    assert row["agreement"] == {"same_init": True, "input_max_abs_diff": pytest.approx(0.0, abs=1e-5)}
    assert row["ncood"]["img_s"] > 0 and row["reference"]["img_s"] > 0 and row["speedup"] > 0
    assert math.isfinite(row["ncood"]["loss"]) and math.isfinite(row["reference"]["loss"])
    assert row["flops_per_image"] > 0
    ev = row["eval"]
    assert "error" not in ev and ev["eval_s"] > 0 and ev["overhead_at_eval_every_10"] > 0


def test_bf16_extract_smoke_compares_both_precisions():
    out = run_json("bf16_extract.py", "--device", "cpu")
    assert out["condition"] == "resnet18-w4-nol2-sn-lg-e2" and out["epochs_trained"] == 2
    assert {r["ood_set"] for r in out["rows"]} == {"photos", "scrambled", "noise"}
    gmm = [r for r in out["rows"] if r["score"] == "gmm"]
    assert len(gmm) == 3 and all(0 <= r["auroc_fp32"] <= 1 and 0 <= r["auroc_bf16"] <= 1 for r in gmm)
    for r in out["rows"]:
        assert r["auroc_bf16_minus_fp32"] == pytest.approx(r["auroc_bf16"] - r["auroc_fp32"])
    # CPU bf16 autocast really rounds: the two arms' features differ (by about bf16's 2^-8 relative precision)
    assert 0 < out["feature_max_rel_diff"]["test"] < 0.2
    assert set(out["gmm_jitter"]) == {"fp32", "bf16"} and out["env"]["device_type"] == "cpu"


@pytest.mark.slow  # trains a tiny model and starts two real `mlflow models serve` processes (~80 s on 2 cores)
def test_serve_smoke_reports_every_arm_and_the_floor():
    out = run_json("serve.py", timeout=400)
    assert out["bench"] == "serve" and out["versions"]["mlflow"] and len(out["load_before"]) == 3
    for what, n in (("single", 1), ("batch", 16)):
        r = out[what]
        assert r["images_per_request"] == n and r["runs"] == 3 and len(r["every_run"]) == 3
        for arm in ("bare", "predict", "floor_predict", "http", "floor"):
            assert 0 < r[f"{arm}_p50_ms"] <= r[f"{arm}_p99_ms"]
        assert r["predict_over_bare"] == pytest.approx(r["predict_p50_ms"] / r["bare_p50_ms"])
        assert r["http_extra_ms"] == pytest.approx(r["http_p50_ms"] - r["floor_p50_ms"] - r["predict_p50_ms"])
        assert r["predict_extra_ms"] == pytest.approx(r["predict_p50_ms"] - r["floor_predict_p50_ms"]
                                                      - r["bare_p50_ms"])
        assert r["floor_plus_bare_over_bare"] == pytest.approx(1 + r["floor_predict_p50_ms"] / r["bare_p50_ms"])


@pytest.mark.slow  # a real local Ray sweep of 2 one-epoch trials (profiled), one bare trial alone and two at once
def test_grid_smoke_compares_sweep_and_bare_trials():
    out = run_json("grid.py", timeout=600)
    assert out["bench"] == "grid" and out["trials"] == 2 and len(out["runs"]) == 1 and out["runs"][0]["errors"] == 0
    run = out["runs"][0]
    assert run["sweep_s"] > 0 and len(run["bare_trial_s"]) == 1 and run["bare_trial_s"][0] > 0
    assert run["bare_compute_s"] == pytest.approx(run["bare_trial_s"][0] * 2 / out["concurrency"])
    assert out["median_ratio"] == pytest.approx(run["sweep_s"] / run["bare_compute_s"])
    paired = run["paired_trial_s"]  # the trials `concurrency` at once, each in its own plain process
    assert len(paired) == out["concurrency"] and min(paired) > 0
    assert run["paired_compute_s"] == pytest.approx(sum(paired) / len(paired) * 2 / out["concurrency"])
    assert out["median_ratio_paired"] == pytest.approx(run["sweep_s"] / run["paired_compute_s"])
    cli = run["cli_trial_s"]  # the trial as `ncood train` from the shell, a new process (its config checked inside)
    assert len(cli) == 1 and cli[0] > 0
    assert run["cli_compute_s"] == pytest.approx(cli[0] * 2 / out["concurrency"])
    assert out["median_ratio_cli"] == pytest.approx(run["sweep_s"] / run["cli_compute_s"])
    comp = out["components_s"]
    assert out["profiled_trials"] == 2 and comp["trial total"] > 0
    for what in ("model logging", "evaluation", "mlflow run creation", "ray reporting", "data + model set-up"):
        assert 0 < comp[what] < comp["trial total"], what  # each found in the trials' profiles
    assert not Path(out["scratch_dir"]).exists()  # a run that succeeded leaves no store or Ray results behind


def test_scratch_dir_is_removed_after_success_and_kept_after_failure(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the kept folders go with the test's tmp_path
    sys.path.insert(0, str(BENCH))
    try:
        from _common import scratch_dir
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.delenv("NCOOD_BENCH_KEEP", raising=False)
    with scratch_dir("ncood-test-scratch-") as ok:
        (ok.path / "mlflow.db").write_text("x")
        ok.ok = True
    assert not ok.path.exists() and capsys.readouterr().err == ""
    with scratch_dir("ncood-test-scratch-") as failed:  # ok never set: the bench's figures did not come out
        pass
    assert failed.path.is_dir() and f"kept {failed.path} (the run failed or was interrupted)" in capsys.readouterr().err
    with pytest.raises(RuntimeError), scratch_dir("ncood-test-scratch-") as raised:
        raise RuntimeError("a sweep died")
    assert raised.path.is_dir() and str(raised.path) in capsys.readouterr().err
    monkeypatch.setenv("NCOOD_BENCH_KEEP", "1")
    with scratch_dir("ncood-test-scratch-") as kept:
        kept.ok = True
    assert kept.path.is_dir() and "NCOOD_BENCH_KEEP=1" in capsys.readouterr().err
    assert {failed.path, raised.path, kept.path} == set(tmp_path.iterdir())
