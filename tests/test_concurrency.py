"""Concurrent sweeps on one sqlite store: two ablation jobs started at once (each its own driver and local Ray, 4
trials at a time each: 8 trial processes writing together) on a store neither has created yet, into the same
experiment. Both finish with every run complete; the store is in WAL mode. The PostgreSQL-backed server case is
in tests/test_deploy.py."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from ncood import keys, tracking

from sweep_procs import job_env, logged_steps, stop_tree, sweep_command

TRIALS_PER_SWEEP = 4  # 2 seeds x L2 off/on, all at once (--num-cpus 4)


def max_overlap(runs) -> int:
    """Most runs RUNNING at one moment (from their start and end times)."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs],
                    key=lambda e: (e[0], e[1]))
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


# Ray's teardown, not an error of the sweep: an idle trial worker SIGTERMed as the driver shuts Ray down, while
# Python runs a weakref callback, prints "Exception ignored in: ... sigterm_handler ... SystemExit: 1" (Ray's handler
# raises SystemExit there). Seen once in 5 suite runs, after every trial had finished and the champion was registered.
_TEARDOWN_NOISE = re.compile(r"Exception ignored in:(?:(?!Exception ignored in:).)*?sigterm_handler.*?SystemExit: 1",
                             re.S)


def _without_teardown_noise(text: str) -> str:
    return _TEARDOWN_NOISE.sub("", text)


RACE = """
import sys, time
from ncood import tracking
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.001)
print(tracking.prepare_experiment("raced", sys.argv[1]))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drivers_creating_one_fresh_store_at_once(tmp_path):
    """Three drivers prepare the same experiment on a store that does not exist yet. Without the store lock
    MLflow's schema migrations collide (alembic: 'Online migration expected to match one row')."""
    import time

    uri = tracking.resolve_tracking_uri(str(tmp_path / "mlflow.db"))
    start = str(time.time() + 8)  # after the three interpreters have imported ncood
    procs = [subprocess.Popen([sys.executable, "-c", RACE, uri, start], env=job_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert len({out.strip().splitlines()[-1] for out in outputs}) == 1  # one experiment id for all three
    with sqlite3.connect(tracking.sqlite_path(uri)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sweeps_at_once_into_one_sqlite_experiment(tmp_path):
    uri = tracking.resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))  # created by the two jobs at once
    logs = [tmp_path / f"sweep{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "wb") as out:
            cmd = sweep_command(uri, tmp_path / f"ray{i}", "shared", "--seeds", "2",
                                "--num-cpus", str(TRIALS_PER_SWEEP))
            procs.append(subprocess.Popen(cmd, env=job_env(), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
    try:
        codes = [p.wait(timeout=540) for p in procs]
    finally:
        for p in procs:
            stop_tree(p)
    texts = [log.read_text(errors="replace") for log in logs]
    for code, text in zip(codes, texts):
        assert code == 0, text[-5000:]
        assert "database is locked" not in text and "Traceback" not in _without_teardown_noise(text), text[-5000:]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert len({r.data.tags[keys.TAG_RAY_EXPERIMENT] for r in parents}) == 2  # one Ray experiment dir each
    assert len(children) == 2 * TRIALS_PER_SWEEP and {r.info.status for r in children} == {"FINISHED"}
    for parent in parents:
        mine = [r for r in children if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(r.info.run_name for r in mine) == sorted(
            f"resnet18-w2-{l2}-sn-lg-e2-s{s}" for l2 in ("l2", "nol2") for s in (0, 1))
    every_epoch, full_evaluations = logged_steps(2)  # [1, 2] and [2]: the default preset's OoD scores every 3rd + last
    for r in children:
        for key, steps in ((keys.LOSS_TRAIN, every_epoch), (keys.ood_key("noise", "gmm", "auroc"), full_evaluations)):
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, key)) == steps, key
        assert {"checkpoint.pt", "summary.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    print(f"most trial runs RUNNING at once: {max_overlap(children)}")
    assert max_overlap(children) >= 6  # the two sweeps' trials did write at the same time
    with sqlite3.connect(tracking.sqlite_path(uri)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
