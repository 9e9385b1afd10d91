"""ncood.tracking without Ray: store resolution, experiment creation, the trial run's lifecycle (create, batched
per-epoch metrics, resume without duplicate steps, FAILED with an error tag) and the driver's orphan sweep."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ncood import keys, tracking
from ncood.config import TrialConfig, make_config
from ncood.ood import score_params


@pytest.fixture(scope="module")
def store(sqlite_store) -> str:
    return sqlite_store[0]


def _sweep(store: str, name: str) -> tracking.SweepRef:
    exp = tracking.prepare_experiment(name, store)
    return tracking.start_sweep(store, exp, f"{name}-sweep", {"preset": "test"}, {keys.TAG_KIND: "ablation"})


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert tracking.resolve_tracking_uri("m.db") == f"sqlite:///{tmp_path}/m.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    with pytest.raises(tracking.TrackingError, match="sqlite"):
        tracking.resolve_tracking_uri("mlruns")  # the deprecated file store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.default_tracking_uri() == "sqlite:///" + str(tracking.repo_root() / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"


def test_prepare_experiment_absolute_artifacts_and_idempotent(store):
    exp_id = tracking.prepare_experiment("exp a/b", store)
    assert tracking.prepare_experiment("exp a/b", store) == exp_id
    location = MlflowClient(store).get_experiment(exp_id).artifact_location
    db_dir = store[len("sqlite:///"):].rsplit("/", 1)[0]
    assert location == f"file://{db_dir}/artifacts/exp_a_b"


def test_trial_run_lifecycle(store):
    ref = _sweep(store, "lifecycle")
    cfg = make_config("digits", width=4, epochs=3, seed=7)
    tracker = tracking.TrialTracker(ref, cfg, trial_id="abc_00001")
    run_id = tracker.start()
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.run_name == f"{cfg.condition}-s7" and run.info.status == "RUNNING"
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == ref.parent_run_id
    assert run.data.tags[keys.TAG_CONDITION] == cfg.condition and run.data.tags[keys.TAG_SEED] == "7"
    assert run.data.tags[keys.TAG_TRIAL_ID] == "abc_00001"
    assert set(run.data.params) == (set(TrialConfig.__dataclass_fields__) - set(tracking.MACHINE_FIELDS)
                                    | {tracking.PARAM_MILESTONES} | set(score_params()))
    assert run.data.params[tracking.PARAM_MILESTONES] == ",".join(map(str, cfg.milestones)) and cfg.lr_steps is None
    assert {f: run.data.tags[f] for f in tracking.MACHINE_FIELDS} == {f: str(getattr(cfg, f))
                                                                      for f in tracking.MACHINE_FIELDS}
    for tag in ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"):
        assert run.data.tags[tag], tag  # MLflow's context tags, resolved on the driver
    assert run.data.params["ood_sets"] == ",".join(cfg.ood_sets)
    assert run.data.params[keys.score_param_key("knn", "k")] == "50"  # the score hyperparameters, as params

    wide = {keys.LOSS_TRAIN: 1.0, **{f"extra/m{i}": float(i) for i in range(1500)}}  # > 1000: chunked batches
    assert tracker.log_epoch(1, wide)
    assert not tracker.log_epoch(1, {keys.LOSS_TRAIN: 9.0})  # a step is logged once
    assert len([k for k in client.get_run(run_id).data.metrics if not k.startswith(keys.SYSTEM_PREFIX)]) == 1501

    tracker.fail(RuntimeError("boom at epoch 2"))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags[keys.TAG_ERROR].startswith("RuntimeError: boom")
    assert "system/cpu_utilization_percentage" in run.data.metrics  # MLflow's monitor: a last sample at the end

    # Retry from the checkpoint: same run, RUNNING again, the old error kept as previous_error, step 1 not repeated.
    again = tracking.TrialTracker(ref, cfg, trial_id="abc_00001")
    assert again.start(run_id) == run_id and again.last_step == 1
    assert not again.log_epoch(1, {keys.LOSS_TRAIN: 2.0})
    assert again.log_epoch(2, {keys.LOSS_TRAIN: 0.5})
    again.finish()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and keys.TAG_ERROR not in run.data.tags
    assert "boom" in run.data.tags[keys.TAG_PREVIOUS_ERROR] and run.data.tags[keys.TAG_RESTARTS] == "1"
    history = client.get_metric_history(run_id, keys.LOSS_TRAIN)
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]


def test_a_reopened_sweep_run_keeps_its_old_error_only_as_previous_error(store):
    """A sweep cut off by `ray job stop` ends with an `error` tag (ncood.tune.sweep.run_sweep); `--resume` reopens
    its run (set_status ACTIVE). A resumed sweep that then ends FINISHED kept the stale error: now it moves to
    `previous_error` on reopening, as a restarted trial's does (test_trial_run_lifecycle)."""
    ref = _sweep(store, "reopened")
    client = MlflowClient(store)
    tracking.set_status(ref, ref.parent_run_id, tracking.FAILED, {keys.TAG_ERROR: "SystemExit: 15"})
    tracking.set_status(ref, ref.parent_run_id, tracking.ACTIVE)
    run = client.get_run(ref.parent_run_id)
    assert run.info.status == "RUNNING" and keys.TAG_ERROR not in run.data.tags
    assert run.data.tags[keys.TAG_PREVIOUS_ERROR] == "SystemExit: 15"
    tracking.set_status(ref, ref.parent_run_id, tracking.FINISHED, {"trials_finished": "2"})
    run = client.get_run(ref.parent_run_id)
    assert run.info.status == "FINISHED" and keys.TAG_ERROR not in run.data.tags


def test_run_found_by_trial_id_without_checkpoint(store):
    ref = _sweep(store, "by-trial-id")
    cfg = make_config("digits", width=4, epochs=2)
    first = tracking.TrialTracker(ref, cfg, trial_id="t_00000").start()
    assert tracking.TrialTracker(ref, cfg, trial_id="t_00000").start() == first  # no second run for the trial
    assert tracking.TrialTracker(ref, cfg, trial_id="t_00001").start() != first
    assert len(tracking.child_runs(ref)) == 2


def test_close_orphans(store):
    ref = _sweep(store, "orphans")
    cfg = make_config("digits", width=4, epochs=2)
    errored = tracking.TrialTracker(ref, cfg.replace(seed=0), trial_id="o_0")
    cut_off = tracking.TrialTracker(ref, cfg.replace(seed=1), trial_id="o_1")
    done = tracking.TrialTracker(ref, cfg.replace(seed=2), trial_id="o_2")
    for t in (errored, cut_off, done):
        t.start()
    done.finish()
    changed = tracking.close_orphans(ref, {"o_0": "worker died"}, interrupted=True)
    assert sorted(changed) == sorted([(errored.run_name, "FAILED"), (cut_off.run_name, "KILLED")])
    status = {r.info.run_name: r for r in tracking.child_runs(ref)}
    assert status[errored.run_name].data.tags[keys.TAG_ERROR] == "worker died"
    assert status[done.run_name].info.status == "FINISHED"
    assert tracking.close_orphans(ref, {}, interrupted=False) == []  # idempotent


def test_ui_command_names_the_store(store):
    assert f"mlflow ui --backend-store-uri {store}" in tracking.ui_command(store)


def test_printed_commands_name_this_environments_scripts_when_path_lacks_them(monkeypatch):
    """`make run` runs .venv/bin/python without activating .venv: a printed bare `mlflow ui` would not be found."""
    import sys

    mine = Path(sys.executable).parent / "mlflow"
    assert mine.exists()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert tracking.executable("mlflow") == str(mine)
    assert tracking.ui_command("sqlite:////x/mlflow.db").startswith(f"{mine} ui --backend-store-uri sqlite:////x/")
    monkeypatch.setenv("PATH", f"{mine.parent}:/usr/bin:/bin")
    assert tracking.executable("mlflow") == "mlflow"  # the shell finds this one: the short form
    assert tracking.executable("no-such-script") == "no-such-script"


def test_git_state_and_ray_job_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("NCOOD_GIT_COMMIT", raising=False)
    assert tracking.git_state(tmp_path) == {}  # not a checkout (e.g. a Ray job's working-dir copy)
    monkeypatch.setenv("NCOOD_GIT_COMMIT", "abc123")
    assert tracking.git_state(tmp_path) == {"mlflow.source.git.commit": "abc123"}
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    assert tracking.in_ray_job_copy(copy) and not tracking.in_ray_job_copy(tmp_path)


def test_a_store_inside_a_ray_job_copy_is_refused(tmp_path, monkeypatch):
    """Inside `ray job submit --working-dir` the cwd is Ray's temporary copy: a relative sqlite path resolved
    there (flag or MLFLOW_TRACKING_URI) made a store that vanished with the job, which succeeded. Refused, as the
    default store is, with the fix; an absolute path outside the copy is fine."""
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    for uri in ("mlruns/mlflow.db", "sqlite:///mlruns/mlflow.db", f"sqlite:///{copy}/m.db"):
        with pytest.raises(tracking.TrackingError, match=r"inside this Ray job's temporary working-dir copy.*"
                                                         r"--tracking-uri sqlite:////ABS/PATH/mlflow.db"):
            tracking.resolve_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns/mlflow.db")
    with pytest.raises(tracking.TrackingError, match="temporary working-dir copy"):
        tracking.resolve_tracking_uri(None)
    assert tracking.resolve_tracking_uri(f"{tmp_path}/m.db") == f"sqlite:///{tmp_path}/m.db"
    assert tracking.resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_trials_registering_the_same_datasets_at_once_all_get_their_inputs(store, tmp_path):
    """A sweep's first round starts its trials together, and each registers the same datasets (same digests) as
    MLflow dataset inputs. MLflow's SQL store inserts the experiment's missing datasets and links them in one
    transaction, so concurrent trials collide on the datasets' unique key (without the retry in
    ncood.run_fields.log_dataset_inputs, 6 threads at once failed in 2 of 3 tries). 8 trials at once here, each in
    its own thread and client: every run gets all its inputs and the experiment holds each dataset once."""
    import threading

    import torch

    from ncood.pipeline import load_trial_data

    ref = _sweep(store, "dataset-race")
    cfg = make_config("digits", width=4, epochs=1, data_root=str(tmp_path))
    data, ood_sets = load_trial_data(cfg, torch.device("cpu"))
    trackers = [tracking.TrialTracker(ref, cfg.replace(seed=i), trial_id=f"race_{i:05d}") for i in range(8)]
    for t in trackers:
        t.start()
    barrier, errors = threading.Barrier(len(trackers)), []

    def log(tracker):
        barrier.wait()
        try:
            tracker.log_inputs(data, ood_sets)
        except Exception as e:  # noqa: BLE001 - collected and shown below
            errors.append(f"{type(e).__name__}: {e}"[:300])

    threads = [threading.Thread(target=log, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    client = MlflowClient(store)
    names = {"digits-train", "digits-val", "digits-test", *ood_sets}
    digests = set()
    for t in trackers:
        inputs = client.get_run(t.run_id).inputs.dataset_inputs
        assert {d.dataset.name for d in inputs} == names
        digests |= {(d.dataset.name, d.dataset.digest) for d in inputs}
    assert len(digests) == len(names)  # one dataset row per set, shared by the 8 runs
    for t in trackers:
        t.finish()


def test_a_second_sweep_in_an_experiment_says_so_before_it_starts(store, capsys):
    """`make run` twice adds a sweep beside the first: the driver says so, with --resume and --experiment."""
    from ncood.tune.sweep import _say_if_not_the_first

    exp = tracking.prepare_experiment("second-sweep", store)
    _say_if_not_the_first(store, exp, "second-sweep", keys.KIND_ABLATION)
    assert capsys.readouterr().out == ""  # the first sweep: nothing to say
    first = tracking.start_sweep(store, exp, "second-sweep-a", {"preset": "test"}, {keys.TAG_KIND: keys.KIND_ABLATION})
    _say_if_not_the_first(store, exp, "second-sweep", keys.KIND_ABLATION)
    out = capsys.readouterr().out
    assert "already holds 1 ablation sweep(s) (newest: second-sweep-a)" in out
    assert "--resume" in out and "--experiment" in out
    _say_if_not_the_first(store, exp, "second-sweep", keys.KIND_NC_INTERVENTION)  # another kind of sweep: silent
    assert capsys.readouterr().out == "" and first.parent_run_id
