"""Trial processes that die, for real: a trial worker killed with SIGKILL in the middle of training is retried from
its last checkpoint into the same MLflow run (no orphan RUNNING run, no duplicate step), and a trial that Ray's
out-of-memory killer stops is reported as such (failure_kind "oom" on a FAILED run). Each test runs
tune_jobs/ablation.py as its own process with its own local Ray and sqlite store, as a user would."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from ncood import keys
from ncood.tune.status import failure_kind

from sweep_procs import job_env, logged_steps, ray_workers, stop_tree, sweep_command

TRAIN_TITLE = "ray::ImplicitFunc.train"  # the title Ray gives a worker while it runs a function trainable


def _runs(uri: str, experiment: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    return ([r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "sweep"],
            [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"])


def test_failure_kinds():
    assert failure_kind("ncood.tune.outbox.TrackingUnavailable: cannot write to the tracking store") == "tracking"
    assert failure_kind("1 worker(s) were killed due to the node running low on memory.") == "oom"
    assert failure_kind("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB") == "oom"
    assert failure_kind("The actor is dead because its worker process has died. Worker exit type: "
                        "SYSTEM_ERROR") == "killed"
    assert failure_kind("ValueError: bad lr") == "error"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_sigkill_mid_training_is_retried_into_the_same_run(tmp_store, tmp_path):
    uri = tmp_store
    epochs = 7  # the first Ray checkpoint is at epoch 3 (the preset checkpoints every 3rd): 4 epochs left to kill in
    cmd = sweep_command(uri, tmp_path / "ray", "sigkill", "--l2", "off", "--epochs", str(epochs), "--width", "4",
                        "--num-cpus", "1", "--max-failures", "1")
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        job = subprocess.Popen(cmd, env=job_env(), stdout=out, stderr=subprocess.STDOUT)
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and job.poll() is None and time.time() < deadline:
            # kill once the trial has a checkpoint (epoch >= 3) and is training on
            if list((tmp_path / "ray").glob("sigkill_*/*/checkpoint_*")):
                workers = ray_workers(job.pid, TRAIN_TITLE)
                if workers:
                    killed = workers[0].pid
                    workers[0].send_signal(signal.SIGKILL)
            time.sleep(0.05)
        assert killed is not None, "the trial finished or never started before it could be killed:\n" + \
            log.read_text(errors="replace")[-3000:]
        rc = job.wait(timeout=300)
    finally:
        stop_tree(job)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-5000:]

    parents, children = _runs(uri, "sigkill")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 1, [r.info.run_name for r in children]  # the retry continued the run: no second one
    run = children[0]
    assert run.info.status == "FINISHED" and run.data.tags[keys.TAG_RESTARTS] == "1"
    assert run.data.tags[keys.TAG_PREVIOUS_FAILURE_KIND] == "killed"
    assert f"pid: {killed}" in run.data.tags[keys.TAG_PREVIOUS_ERROR]  # Ray's account names the killed worker
    client = MlflowClient(uri)
    # every step once: nothing lost, nothing logged twice (MLflow's system metrics count samples, not epochs)
    for key in (k for k in run.data.metrics if not k.startswith(keys.SYSTEM_PREFIX)):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) in logged_steps(epochs), key


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_out_of_memory_kill_is_reported_as_oom(tmp_store, tmp_path):
    """Ray's memory monitor with its kill threshold at 1% of the node's memory (always exceeded): it kills the
    trial's worker as soon as it runs, as it would a trial that outgrew the node. The trial never got as far as
    creating its MLflow run; the driver creates it, FAILED, with failure_kind "oom" and Ray's account."""
    uri = tmp_store
    cmd = sweep_command(uri, tmp_path / "ray", "oom", "--l2", "off", "--num-cpus", "1", "--max-failures", "0")
    env = job_env(RAY_memory_usage_threshold="0.01", RAY_memory_monitor_refresh_ms="100")
    job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert job.returncode == 1, job.stdout[-3000:] + job.stderr[-3000:]  # some trials failed
    parents, children = _runs(uri, "oom")
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].data.tags["trials_failed"] == "1"
    assert len(children) == 1
    run = children[0]
    assert run.info.status == "FAILED" and run.info.run_name == "resnet18-w2-nol2-sn-lg-e2-s0"
    assert run.data.tags[keys.TAG_FAILURE_KIND] == "oom"
    assert "running low on memory" in run.data.tags[keys.TAG_ERROR]
    assert run.data.params["seed"] == "0"  # the run the trial would have made: its config as params
    assert keys.LOSS_TRAIN not in run.data.metrics
