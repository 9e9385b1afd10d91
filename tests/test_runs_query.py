"""ncood.runs_query against a real sqlite MLflow store: newest sweep (of a kind), child runs over several pages, the
run of a Ray trial, finished trials, kept checkpoints, and the NC intervention's sources with their errors."""
from __future__ import annotations

import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ncood import keys, runs_query, tracking
from ncood.config import make_config

T0 = 1_700_000_000_000  # ms: explicit start times, so "newest" and "oldest first" never tie


def _run(client, exp_id, start, tags, params=None):
    run = client.create_run(exp_id, start_time=start, tags=tags)
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return run.info.run_id


def _trial(client, exp_id, parent, i, status="FINISHED", cfg=None):
    cfg = cfg or make_config("digits", seed=i, width=4, epochs=3)
    params = {k: tracking._param_value(v) for k, v in cfg.to_dict().items()}
    rid = _run(client, exp_id, T0 + 100 + i, {MLFLOW_PARENT_RUN_ID: parent, keys.TAG_ROLE: keys.ROLE_TRIAL,
                                              keys.TAG_TRIAL_ID: f"t{i}", keys.TAG_CONDITION: cfg.condition,
                                              keys.TAG_SEED: str(cfg.seed)}, params)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def sweeps(sqlite_store, tmp_path_factory):
    """An ablation sweep (older; 5 no-L2 trials, seed 3 FAILED, seeds 0 and 1 with kept checkpoints at epochs 1 and
    3) and a newer search sweep with one trial."""
    uri = sqlite_store[0]
    client = MlflowClient(uri)
    exp_id = tracking.prepare_experiment("rq", uri)
    ablation = _run(client, exp_id, T0, {keys.TAG_ROLE: keys.ROLE_SWEEP, keys.TAG_KIND: keys.KIND_ABLATION})
    search = _run(client, exp_id, T0 + 50, {keys.TAG_ROLE: keys.ROLE_SWEEP, keys.TAG_KIND: keys.KIND_SEARCH})
    trials = [_trial(client, exp_id, ablation, i, "FAILED" if i == 3 else "FINISHED") for i in range(5)]
    _trial(client, exp_id, search, 9)
    files = tmp_path_factory.mktemp("ckpt")
    for epoch in (1, 3):
        (files / f"epoch_{epoch:03d}.pt").write_bytes(b"not a real checkpoint: only its name is read")
        for rid in trials[:2]:
            client.log_artifact(rid, str(files / f"epoch_{epoch:03d}.pt"), runs_query.CHECKPOINT_DIR)
    return client, exp_id, ablation, search, trials


def test_newest_sweep_of_a_kind(sweeps):
    client, exp_id, ablation, search, _ = sweeps
    assert runs_query.newest_sweep(client, exp_id).info.run_id == search
    assert runs_query.newest_sweep(client, exp_id, keys.KIND_ABLATION).info.run_id == ablation
    assert runs_query.newest_sweep(client, exp_id, keys.KIND_NC_INTERVENTION) is None


def test_child_runs_read_every_page_oldest_first(sweeps, monkeypatch):
    client, exp_id, ablation, _, trials = sweeps
    monkeypatch.setattr(runs_query, "PAGE", 2)  # 5 runs: three pages
    assert [r.info.run_id for r in runs_query.child_runs(client, exp_id, ablation)] == trials
    assert len(runs_query.child_runs(client, exp_id, ablation, keys.ROLE_SWEEP)) == 0
    assert runs_query.trial_run(client, exp_id, ablation, "t2").info.run_id == trials[2]
    assert runs_query.trial_run(client, exp_id, ablation, "t9") is None  # the search sweep's trial


def test_finished_trials_newest_first(sweeps):
    client, exp_id, _, _, trials = sweeps
    finished = [r.info.run_id for r in runs_query.finished_trials(client, exp_id)]
    assert finished[1:] == [trials[4], trials[2], trials[1], trials[0]] and trials[3] not in finished


def test_experiment_missing_names_the_ones_there(sweeps):
    client = sweeps[0]
    assert runs_query.experiment(client, "rq").experiment_id == sweeps[1]
    with pytest.raises(runs_query.RunsQueryError, match=r"no MLflow experiment 'nope'.*'rq'"):
        runs_query.experiment(client, "nope")


def test_find_sources_restores_the_latest_kept_checkpoint_before_the_epoch(sweeps):
    client, _, ablation, _, trials = sweeps
    assert runs_query.checkpoint_epochs(client, trials[0]) == {1: "checkpoints/epoch_001.pt",
                                                               3: "checkpoints/epoch_003.pt"}
    sources = runs_query.find_sources(client, "rq", 2, seeds=[0, 1])
    assert [(s["run_id"], s["onset"], s["requested"], s["checkpoint"]) for s in sources] == [
        (trials[0], 1, 2, "checkpoints/epoch_001.pt"), (trials[1], 1, 2, "checkpoints/epoch_001.pt")]
    assert sources[1]["config"] == make_config("digits", seed=1, width=4, epochs=3).to_dict()
    with pytest.raises(runs_query.RunsQueryError, match="--keep-checkpoint-epochs 2"):
        runs_query.find_sources(client, "rq", 2)  # seeds 2 and 4 kept none (seed 3 FAILED: left out)
    with pytest.raises(runs_query.RunsQueryError, match="no finished no-L2 runs of condition 'x'"):
        runs_query.find_sources(client, "rq", 2, sweep_run_id=ablation, condition="x")
