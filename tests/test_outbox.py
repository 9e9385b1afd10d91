"""ncood.tune.outbox without Ray: what a trial could not write waits, survives a checkpoint round trip, and is
written once when the store answers again (a second delivery of an entry adds nothing in MLflow)."""
from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient

from ncood import keys, tracking
from ncood.config import make_config
from ncood.tune.outbox import Outbox, TrackingUnavailable, retry_budget


@pytest.fixture(scope="module")
def store(sqlite_store):
    uri = sqlite_store[0]
    exp = tracking.prepare_experiment("outbox", uri)
    return tracking.start_sweep(uri, exp, "sweep", {}, {keys.TAG_KIND: keys.KIND_ABLATION})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def test_retry_budget_formula():
    assert retry_budget({}) == 244.0  # MLflow 3.17 defaults: 7 retries, factor 2 -> 4+8+16+32+64+120
    assert retry_budget({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}) == 6.0
    assert retry_budget({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}) == 0.0


def test_unreachable_store_keeps_everything(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = tracking.SweepRef(f"http://127.0.0.1:{_closed_port()}", store.experiment_id, store.parent_run_id)
    tracker = tracking.TrialTracker(down, make_config("digits", seed=0), "t_down")
    tracker.run_id = "0" * 32  # as if started before the outage
    (tmp_path / "spool").mkdir()
    outbox = Outbox(tmp_path / "spool")
    outbox.add_epoch(3, {keys.LOSS_TRAIN: 0.5})
    (tmp_path / "epoch_003.pt").write_bytes(b"weights")
    outbox.add_file(tmp_path / "epoch_003.pt", "checkpoints")
    with pytest.raises(TrackingUnavailable, match=r"Not lost: metrics of epoch 3 and 1 file\(s\).*--resume"):
        outbox.flush(tracker)
    assert len(outbox) == 2 and not (tmp_path / "epoch_003.pt").exists()


def test_checkpoint_round_trip_then_written_once(store, tmp_path):
    cfg = make_config("digits", seed=1)
    tracker = tracking.TrialTracker(store, cfg, "t_back")
    run_id = tracker.start()
    for name in ("spool", "ckpt", "spool2"):
        (tmp_path / name).mkdir()
    first = Outbox(tmp_path / "spool")
    first.add_epoch(1, {keys.LOSS_TRAIN: 0.9, keys.ACC_TRAIN: 0.1})
    first.add_epoch(2, {keys.LOSS_TRAIN: 0.8, keys.ACC_TRAIN: 0.2})
    (tmp_path / "epoch_002.pt").write_bytes(b"weights")
    first.add_file(tmp_path / "epoch_002.pt", "checkpoints")
    first.save(tmp_path / "ckpt")  # what EpochReporter puts into the Ray checkpoint

    again = Outbox(tmp_path / "spool2")  # the retried trial, from that checkpoint
    again.load(tmp_path / "ckpt")
    assert again.metrics == first.metrics and len(again) == 3
    again.flush(tracker)
    assert len(again) == 0 and tracker.last_step == 2
    # a delivery that did arrive although the client saw an error is sent again: MLflow keeps one copy
    repeat = Outbox(tmp_path / "spool2")
    repeat.load(tmp_path / "ckpt")
    repeat.flush(tracker)
    client = MlflowClient(store.tracking_uri)
    for key in (keys.LOSS_TRAIN, keys.ACC_TRAIN):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2], key
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/epoch_002.pt"]
    assert list((tmp_path / "spool2").iterdir()) == []  # sent files leave the spool


def test_epochs_over_the_batch_cap_are_written_in_chunks(store, tmp_path):
    """Epochs flushed together share log_batch calls of at most MLflow's 1000 metrics; an epoch larger than the cap
    still goes (split); every (key, step) is stored once with its own timestamp."""
    tracker = tracking.TrialTracker(store, make_config("digits", seed=2), "t_chunks")
    run_id = tracker.start()
    (tmp_path / "spool").mkdir()
    outbox = Outbox(tmp_path / "spool")
    sizes = {1: 10, 2: 600, 3: 600, 4: 1500, 5: 10}  # epoch -> metrics: chunks [1, 2], [3], [4] (split), [5]
    for step, n in sizes.items():
        outbox.add_epoch(step, {f"m/{i:04d}": float(step * 10000 + i) for i in range(n)})
    assert [len(c) for c in _chunks(outbox)] == [2, 1, 1, 1]
    outbox.flush(tracker)
    assert len(outbox) == 0 and tracker.last_step == 5
    client = MlflowClient(store.tracking_uri)
    for key, steps in (("m/0000", [1, 2, 3, 4, 5]), ("m/0599", [2, 3, 4]), ("m/1499", [4])):
        hist = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in hist) == steps, key
        assert all(m.value == m.step * 10000 + int(key[2:]) for m in hist)


def _chunks(outbox: Outbox) -> list[list[dict]]:
    """The log_batch chunks a flush would send, without sending them."""
    pending, out = list(outbox.metrics), []
    while outbox.metrics:
        chunk = outbox._next_chunk()
        out.append(chunk)
        del outbox.metrics[:len(chunk)]
    outbox.metrics[:] = pending
    return out
