"""Two users of one tracking server with basic auth, set up as deploy/ does it (`default_permission = READ`): the
second user may read the first one's experiment and registered model but not write them. ncood's commands that
write there must say so in one line naming what was refused and the fix, exit 2 and print no traceback: the sweep
(before Ray starts), the aggregation (after writing its files), the champion's registration.

A real `mlflow server --app-name basic-auth` on 127.0.0.1 (sqlite stores; the PostgreSQL-backed server of
deploy/ is tests/test_deploy.py's), a real tiny sweep of the first user in its own process; the second user's
commands run in this process with that user's credentials in the environment, as a shell would set them.
"""
from __future__ import annotations

import importlib.util  # find_spec
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ncood import keys
from ncood.serve.server import free_port

from job_scripts import load_job
from sweep_procs import job_env, stop_group, sweep_command

BIN = Path(sys.executable).parent  # the venv's mlflow
OWNER, READER = "owner", "reader"
EXPERIMENT = "owners-grid"  # the owner's; the reader may only read it


@dataclass(frozen=True)
class AuthServer:
    uri: str
    passwords: dict[str, str]  # user -> password
    root: Path


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _as_user(server: AuthServer, user: str):
    """MLFLOW_TRACKING_USERNAME/PASSWORD of `user` in this process's environment (MLflow's client reads them at
    every request), restored after."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=server.passwords[user])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, new_store):
    """The server, users `owner` and `reader` made by the admin, and the owner's finished 2-trial sweep in
    EXPERIMENT, whose champion the owner's job registered (so the registered model is the owner's too)."""
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail("the basic-auth app needs Flask-WTF: pip install 'Flask-WTF<2' (pyproject's dev extra)")
    root = tmp_path_factory.mktemp("auth-server")
    ini = root / "basic_auth.ini"  # what deploy/mlflow/start-server.sh writes, with sqlite for the users
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root}/auth.db\n"
                   "admin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "auth_cache_ttl_seconds = 60\n")  # 60: as deploy/ (each password check is a slow hash)
    passwords = {user: secrets.token_urlsafe(12) for user in ("admin", OWNER, READER)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=passwords["admin"],
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16), MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    port, log = free_port(), root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
             new_store(root / "store"), "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = AuthServer(f"http://127.0.0.1:{port}", passwords, root)
    try:
        deadline = time.time() + 150
        while not _up(f"{server.uri}/health"):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        import mlflow.server

        with _as_user(server, "admin"):
            users = mlflow.server.get_app_client("basic-auth", tracking_uri=server.uri)
            for user in (OWNER, READER):
                users.create_user(user, passwords[user])
        job = subprocess.run(sweep_command(server.uri, root / "ray", EXPERIMENT),
                             env=job_env(MLFLOW_TRACKING_USERNAME=OWNER, MLFLOW_TRACKING_PASSWORD=passwords[OWNER]),
                             capture_output=True, text=True, timeout=400)
        assert job.returncode == 0 and "Champion:" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        yield server
    finally:
        stop_group(proc)


def _experiment_runs(server: AuthServer) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    return client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=100)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_into_another_users_experiment_stops_before_ray(auth_server, tmp_path, capsys):
    """The reader's grid into the owner's experiment: the server refuses the sweep run (HTTP 403). That was an
    MlflowException traceback after Ray had started; now one line naming the experiment and both fixes, exit 2,
    before Ray starts, nothing written."""
    import ray

    with _as_user(auth_server, READER):
        before = len(_experiment_runs(auth_server))
        argv = sweep_command(auth_server.uri, tmp_path / "ray", EXPERIMENT)[2:]  # the flags, for main()
        rc = load_job("ablation").main(argv)
        err = capsys.readouterr().err
        assert rc == 2, err
        line = err.strip()
        assert "\n" not in line and line.startswith("ablation: the tracking server"), err
        for part in (f"refused to create a run in experiment '{EXPERIMENT}' for user {READER}", "permission denied",
                     "--experiment <a name of your own>", "EDIT permission"):
            assert part in line, (part, line)
        assert not ray.is_initialized()  # refused before Ray's start-up, not after it
        assert len(_experiment_runs(auth_server)) == before
    with _as_user(auth_server, OWNER):  # the owner's sweep run and trials, all FINISHED, untouched
        assert {r.info.status for r in _experiment_runs(auth_server)} == {"FINISHED"}
        assert sum(r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_SWEEP for r in _experiment_runs(auth_server)) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_registering_under_another_users_model_name_says_to_use_ones_own(auth_server, capsys):
    """Registered models are global: ncood-ood-scorer is the owner's (their job registered it), so the server
    refuses the reader's version of it. The job's end used to print the MlflowException and suggest `ncood register`
    with the same arguments, refused the same way; now it says the name is another user's and to pass a model
    name of one's own (`--model-name`, which `ncood register` has and the job has not), and that works."""
    from mlflow.tracking import MlflowClient

    from ncood import tracking
    from ncood.cli import main
    from ncood.tune import jobs
    from ncood.tune.sweep import SweepResult

    with _as_user(auth_server, READER):
        client = MlflowClient(auth_server.uri)
        sweep = next(r for r in _experiment_runs(auth_server) if r.data.tags.get(keys.TAG_ROLE) == keys.ROLE_SWEEP)
        ref = tracking.SweepRef(auth_server.uri, sweep.info.experiment_id, sweep.info.run_id)
        jobs.register_champion(SweepResult(ref, "", [], interrupted=False, num_trials=2, num_errors=0))
        out = capsys.readouterr().out.strip()
        assert out.startswith("Champion not registered: the tracking server") and "\n" not in out, out
        redo = f"ncood register --experiment {EXPERIMENT} --tracking-uri {auth_server.uri} --model-name <your-model>"
        for part in ("write the registered model 'ncood-ood-scorer' for user reader", "belongs to another user",
                     redo, "--no-register"):
            assert part in out, (part, out)
        # --mode min: the other condition's run, a new version (model-versions/create refused, as the reporter
        # saw; above, the owner's version already held the model: model-versions/set-tag refused)
        assert main(["register", "--experiment", EXPERIMENT, "--tracking-uri", auth_server.uri, "--mode", "min"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ncood register: the tracking server") and "\n" not in err and "--model-name" in err
        assert main(["register", "--experiment", EXPERIMENT, "--tracking-uri", auth_server.uri,
                     "--model-name", "readers-scorer"]) == 0  # the way out the messages name
        assert "registered: readers-scorer version 1" in capsys.readouterr().out
        assert client.get_model_version_by_alias("ncood-ood-scorer", "champion").version == "1"  # the owner's


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_aggregating_another_users_experiment_keeps_the_files_and_says_why_no_run(auth_server, tmp_path, capsys):
    """`ncood aggregate` by the reader: the tables, figures and report are written and printed, then the server
    refuses the sweep run's headline metrics (runs/log-batch 403). That was a traceback; now one line after the
    report saying where the files are and that --no-log-run (or EDIT permission) is the fix, exit 2."""
    from ncood.cli import main

    out = tmp_path / "aggregate"
    with _as_user(auth_server, READER):
        before = len(_experiment_runs(auth_server))
        rc = main(["aggregate", "--experiment", EXPERIMENT, "--tracking-uri", auth_server.uri, "--out", str(out),
                   "--resamples", "200"])
        printed = capsys.readouterr()
        assert rc == 2 and "Traceback" not in printed.err, printed.err
        line = printed.err.strip()
        assert line.startswith(f"aggregate: the files are written ({out})") and "\n" not in line, line
        for part in (f"refused to log to experiment '{EXPERIMENT}' for user reader", "EDIT permission",
                     "--no-log-run"):
            assert part in line, (part, line)
        assert (out / "report.md").is_file() and "# Sweep" in printed.out  # written and printed first
        assert len(_experiment_runs(auth_server)) == before  # no aggregate run left behind
        assert main(["aggregate", "--experiment", EXPERIMENT, "--tracking-uri", auth_server.uri, "--out", str(out),
                     "--resamples", "200", "--no-log-run"]) == 0
    with _as_user(auth_server, OWNER):  # the other fix: the owner grants EDIT, as deploy/README.md shows
        import mlflow.server

        experiment_id = _experiment_runs(auth_server)[0].info.experiment_id
        mlflow.server.get_app_client("basic-auth", tracking_uri=auth_server.uri).grant_user_permission(
            READER, "experiment", experiment_id, "EDIT")
    with _as_user(auth_server, READER):
        assert main(["aggregate", "--experiment", EXPERIMENT, "--tracking-uri", auth_server.uri, "--out", str(out),
                     "--resamples", "200"]) == 0
        runs = _experiment_runs(auth_server)
        assert [r.data.tags.get(keys.TAG_ROLE) for r in runs].count(keys.ROLE_AGGREGATE) == 1
