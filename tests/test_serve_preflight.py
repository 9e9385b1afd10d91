"""`ncood serve` refusing to start (ncood.serve.preflight): one line naming the problem and the fix, exit status 2,
nothing created, no address printed. The command runs as its own process: when its checks pass it becomes the
server (execve). The store with a registered model is made with MLflow's client (a LoggedModel, a version, an alias):
the checks read the registry, not the model's files, so no trained model is needed here (tests/test_serve.py serves
real ones)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from ncood.run_fields import process_tracking_uri
from ncood.serve.preflight import ServeError, check_model
from ncood.serve.server import free_port
from sweep_procs import stop_group


def _ncood_serve(*flags: str, timeout_s: float = 180) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `ncood serve FLAGS`; the whole process group goes at the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ncood", "serve", *flags], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc, grace_s=10)
        out, err = proc.communicate()
        raise AssertionError(f"`ncood serve {' '.join(flags)}` still running after {timeout_s} s:\n{out}\n{err}")
    return proc.returncode, out, err


@pytest.fixture
def registry(tmp_store):
    """(tracking URI, logged model id, version) of ncood-ood-scorer@champion in a fresh sqlite store."""
    client = MlflowClient(tmp_store)
    model = client.create_logged_model(client.create_experiment("sweep"), name="ood_scorer")
    client.create_registered_model("ncood-ood-scorer")
    with process_tracking_uri(tmp_store):  # the sqlite registry looks the LoggedModel up through the global URI
        version = str(client.create_model_version("ncood-ood-scorer", source=f"models:/{model.model_id}",
                                                  model_id=model.model_id).version)
    client.set_registered_model_alias("ncood-ood-scorer", "champion", version)
    return tmp_store, model.model_id, version


def test_ncood_serve_without_a_store_says_so_and_creates_nothing(tmp_path):
    """MLflow would create the sqlite file (and its folders, and the schema) before finding nothing registered."""
    for db in (tmp_path / "empty.db", tmp_path / "nodir" / "x.db"):
        rc, out, err = _ncood_serve("--tracking-uri", f"sqlite:///{db}", "--port", str(free_port()))
        assert rc == 2 and out == "", (rc, out, err[-2000:])
        assert err.count("\n") == 1 and f"no MLflow store at {db}" in err, err[-2000:]
        assert "ncood register --experiment" in err and "--tracking-uri" in err, err
        assert list(tmp_path.iterdir()) == [], sorted(tmp_path.rglob("*"))


def test_ncood_serve_names_the_missing_model_and_where(registry, tmp_path):
    uri, model_id, version = registry
    rc, out, err = _ncood_serve("--tracking-uri", uri, "--model-uri", "models:/nope@champion")
    assert rc == 2 and out == "" and err.count("\n") == 1, (rc, out, err[-2000:])
    assert f"no registered model 'nope' in {uri} (registered models there: ncood-ood-scorer)" in err, err
    assert "ncood register --experiment" in err and "--model-uri" in err, err
    check_model("models:/ncood-ood-scorer@champion", uri)  # what exists passes
    check_model(f"models:/ncood-ood-scorer/{version}", uri)
    check_model(f"models:/{model_id}", uri)
    empty = f"sqlite:///{tmp_path / 'empty' / 'mlflow.db'}"
    (tmp_path / "empty").mkdir()
    MlflowClient(empty).search_experiments()  # a store with the schema and nothing registered
    cases = {
        "models:/ncood-ood-scorer@nope": (uri, "has no alias @nope (its aliases: @champion"),
        "models:/ncood-ood-scorer/999": (uri, f"has no version 999 (its versions: {version}"),
        "models:/m-0000": (uri, "no logged model 'm-0000'"),
        "runs:/0123abc/model": (uri, "no run '0123abc'"),
        "models:/": (uri, "not a valid models:/ URI"),
        "models:/ncood-ood-scorer@champion": (empty, "nothing is registered there"),
    }
    for model_uri, (store_uri, fragment) in cases.items():
        with pytest.raises(ServeError, match=re.escape(fragment)):
            check_model(model_uri, store_uri)


def test_ncood_serve_refuses_a_port_in_use(registry):
    """uvicorn would fail to bind only after the model loaded, and the address printed first would reach the other
    server."""
    uri, _, _ = registry
    with socket.socket() as other:  # another server's listening socket
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        rc, out, err = _ncood_serve("--tracking-uri", uri, "--port", str(port))
    assert rc == 2 and out == "", (rc, out, err[-2000:])
    assert err.count("\n") == 1 and f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err, err


def test_register_and_aggregate_name_a_store_that_is_not_there_and_create_nothing(tmp_path, capsys):
    """Commands that only read a store: MLflow would create the sqlite file (and its folders) and then report an
    unknown experiment, leaving the typo'd path behind."""
    from ncood.cli import main

    db = tmp_path / "sub" / "x.db"
    for command in (["register", "--experiment", "ablation-default"], ["aggregate", "--experiment", "ablation-default"]):
        assert main([*command, "--tracking-uri", f"sqlite:///{db}"]) == 2
        assert f"no MLflow store at {db}; pass --tracking-uri" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
