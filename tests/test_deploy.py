"""deploy/ for real (slow, a few minutes on 2 cores; the static checks of its files: tests/test_deploy_files.py).

A throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir (deploy/mlflow/install-postgres.sh apt-installs
PostgreSQL when it is missing and we are root), the tracking server from deploy/mlflow/start-server.sh against it
with basic-auth on and a random admin password, `ray start --head` with token auth, and `ray job submit` of a tiny
ablation grid that tracks into the server as a non-admin user (and one into a plain sqlite store, on the same
head). Every run, param, metric and artifact is read back with credentials (and found in PostgreSQL and the
artifact store); anonymous and wrong-password requests get 401. The server fails: it is stopped mid-grid for
longer than MLflow's (shortened) retry budget and restarted, and `--resume` completes every run with no missing or
repeated step; two grids started at once into one experiment both finish. Finalizers stop everything started.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deploy_support import (DEPLOY, REPO, Postgres, Server, cmdline, http_status, kill_leftovers, log_tail, pgid,
                            postgres_bindir, require_server_deps)
from ncood import keys
from ncood.serve.server import free_port
from ncood.tune.outbox import retry_budget
from sweep_procs import job_env, logged_steps, stop_tree, sweep_command

BIN = Path(sys.executable).parent  # the venv's mlflow and ray
ADMIN = "admin"
SERVICE_USER = "ray-job"  # the non-admin account the Ray job logs in as
PROXY_NAME = "mlflow.example.internal"  # MLFLOW_ALLOWED_HOSTS of deploy/mlflow/mlflow-server.env.example


# ---- integration: PostgreSQL + tracking server + Ray head + ray job submit ------------------------------------------
@pytest.fixture(scope="module")
def postgres(apt_lock):
    """A throwaway cluster in a temp dir on 127.0.0.1:<free port>, set up with deploy/mlflow/init-db.sh."""
    require_server_deps()
    with apt_lock():  # another xdist worker may be apt-installing too
        bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="deploy-pg-", dir="/tmp"))  # short: the socket path must fit 107 bytes
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the `postgres` user the package created
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no `postgres` user to run the server as")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "postgres.log", free_port()
    pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        # trust on the socket (in our 0700 dir), passwords over TCP: the server logs in like a remote client
        subprocess.run([*as_owner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                        "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*pg_ctl, "-l", str(log), "-w", "-t", "60", "-o",
                        f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                       check=True, capture_output=True, timeout=90)
        password = secrets.token_urlsafe(24)
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PGHOST": str(root), "PGPORT": str(port),
               "PGUSER": "postgres", "MLFLOW_DB_PASSWORD": password}
        out = subprocess.run(["bash", str(DEPLOY / "mlflow" / "init-db.sh")], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        yield Postgres(port, password, root, tuple(as_owner), bindir)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{e.cmd[len(as_owner)]} failed: {e.stderr!r}\n{log_tail(log)}")
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*pg_ctl, "-m", "fast", "-w", "-t", "30", "stop"], capture_output=True, timeout=60)
        if (data / "postmaster.pid").exists():  # did not stop: kill the postmaster (first line of its pid file)
            try:
                os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("password_file", ["/dev/stdin", "-"])
def test_init_db_reads_a_password_piped_to_the_postgres_user(postgres, password_file):
    """deploy/README.md step 1 pipes the password into init-db.sh run as the `postgres` user (there `sudo -u
    postgres`, here runuser). The pipe then belongs to root with mode 0600: postgres may read its fd 0 but not
    reopen /dev/stdin, which init-db.sh used to do ("/dev/stdin: Permission denied"). That failure needs the user
    switch, i.e. a root test run; run as another user, only the `-` form tells the old script from the new."""
    import psycopg

    role = "piped_stdin" if password_file == "/dev/stdin" else "piped_dash"  # its own role: the fixture's stays
    password = secrets.token_urlsafe(24)
    script = postgres.socket_dir / f"init-db-{role}.sh"  # a copy the postgres user can read (the docs: /opt/...)
    shutil.copy(DEPLOY / "mlflow" / "init-db.sh", script)
    settings = {"PATH": f"{postgres.bindir}:{os.environ['PATH']}", "PGHOST": str(postgres.socket_dir),
                "PGPORT": str(postgres.port), "PGUSER": "postgres", "MLFLOW_DB_USER": role, "MLFLOW_DB_NAME": role,
                "MLFLOW_AUTH_DB_NAME": f"{role}_auth", "MLFLOW_DB_PASSWORD_FILE": password_file}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    out = subprocess.run([*postgres.as_owner, "env", *(f"{k}={v}" for k, v in settings.items()), "bash", str(script)],
                         input=password + "\n", env=clean, cwd=postgres.socket_dir, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user=role, password=password, dbname=role) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    """deploy/mlflow/start-server.sh on 127.0.0.1 with basic-auth, against the throwaway PostgreSQL."""
    root = Path(tempfile.mkdtemp(prefix="deploy-mlflow-", dir="/tmp"))
    port, admin_password, log = free_port(), secrets.token_urlsafe(18), root / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG"))}
    env.update({
        "PATH": f"{BIN}:{env['PATH']}", "MLFLOW_DB_HOST": "127.0.0.1", "MLFLOW_DB_PORT": str(postgres.port),
        "MLFLOW_DB_PASSWORD": postgres.password, "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN, "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32), "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1", "MLFLOW_RUN_DIR": str(root / "run"),
        "MLFLOW_ALLOWED_HOSTS": PROXY_NAME,  # as mlflow-server.env.example: every client here still uses 127.0.0.1
    })
    server = Server(f"http://127.0.0.1:{port}", admin_password, root / "artifacts", log, env)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head --block` on 127.0.0.1 with token auth (RAY_AUTH_MODE=token + a random RAY_AUTH_TOKEN:
    the head, its job drivers and the submitting CLI all need both); yields (dashboard address, env)."""
    temp = tempfile.mkdtemp(prefix="deploy-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
         f"--temp-dir={temp}", "--disable-usage-stats", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while http_status(f"{address}/api/version") == -1:  # the job server is up once the dashboard answers
            assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(1)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started (per-cluster
        try:  # `ray stop` would stop every Ray cluster of this user on the machine)
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        kill_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_server_refuses_anonymous_and_wrong_password(mlflow_server):
    search = f"{mlflow_server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, (ADMIN, mlflow_server.admin_password + "x")) == 401
    assert http_status(search, (ADMIN, mlflow_server.admin_password)) == 200
    # MLFLOW_ALLOWED_HOSTS names the proxy; localhost stays allowed (start-server.sh appends MLflow's defaults,
    # which the setting would replace: every API call to 127.0.0.1 got 403 "Invalid Host header") and an unknown
    # Host is refused. /health is exempt from the check, so only an API call shows it (deploy/README.md step 1).
    assert http_status(search, (ADMIN, mlflow_server.admin_password), host=PROXY_NAME) == 200
    assert http_status(search.replace("127.0.0.1", "localhost"), (ADMIN, mlflow_server.admin_password)) == 200
    assert http_status(search, (ADMIN, mlflow_server.admin_password), host="rebound.example") == 403
    assert http_status(f"{mlflow_server.uri}/health", host="rebound.example") == 200


@pytest.mark.slow
def test_ray_job_tracks_into_the_shared_server(postgres, mlflow_server, ray_head, monkeypatch):
    """The deployment path end to end: a service user made by the admin, `ray job submit` with the server URI and
    that user's credentials in the job's runtime env, every run and metric back through an authenticated client."""
    import mlflow.server
    import psycopg
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    uri = mlflow_server.uri
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)  # this process is the admin (deploy/README.md, step 2)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_server.admin_password)
    service_password = secrets.token_urlsafe(18)
    user = mlflow.server.get_app_client("basic-auth", tracking_uri=uri).create_user(SERVICE_USER, service_password)
    assert not user.is_admin

    address, env = ray_head
    storage = Path(tempfile.mkdtemp(prefix="deploy-rayres-", dir="/tmp"))
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": SERVICE_USER,
                                "MLFLOW_TRACKING_PASSWORD": service_password}}
    try:
        job = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
             "--runtime-env-json", json.dumps(runtime_env), "--",
             sys.executable, "tune_jobs/ablation.py", "--seeds", "1", "--epochs", "1", "--width", "4",
             "--experiment", "deploy-e2e", "--storage-path", str(storage), "--quiet", "--no-aggregate",
             "--max-concurrent", "1"],  # one reused worker: tests/test_ablation.py::_settings says why
            env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-3000:]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("deploy-e2e")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["resnet18-w4-l2-sn-lg-e1-s0", "resnet18-w4-nol2-sn-lg-e1-s0"]
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags[MLFLOW_PARENT_RUN_ID] == parents[0].info.run_id
        params = run.data.params  # the trial's TrialConfig, one param per field
        assert (params["arch"], params["epochs"], params["width"], params["seed"]) == ("resnet18", "1", "4", "0")
        for key in (keys.LOSS_TRAIN, keys.ACC_TEST, keys.nc_key("nc1"), keys.ood_key("photos", "gmm", "auroc")):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1], key
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint.pt", "summary.json", "config.json"} <= artifacts
        # proxied: the bytes sit in the server's --artifacts-destination, not anywhere on the client side
        stored = mlflow_server.artifacts / experiment.experiment_id / run.info.run_id / "artifacts"
        assert (stored / "checkpoint.pt").stat().st_size > 0
    assert len({frozenset(r.data.metrics) for r in children}) == 1 and children[0].data.metrics
    assert len({frozenset(r.data.params) for r in children}) == 1

    # The runs are rows in PostgreSQL (not some local sqlite fallback).
    with psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password=postgres.password,
                         dbname="mlflow") as conn:
        rows = conn.execute("SELECT r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                            "WHERE e.name = %s", ("deploy-e2e",)).fetchall()
    assert sorted(rows) == [("FINISHED",)] * 3

    server_text = log_tail(mlflow_server.log, 10**7) + " ".join(
        cmdline(int(p)) for p in os.listdir("/proc") if p.isdigit() and pgid(int(p)) == mlflow_server.pgid)
    for secret in (postgres.password, mlflow_server.admin_password, service_password):
        assert secret not in server_text  # neither on the server's command lines nor in its log



@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ray_job_submit_logs_to_the_given_sqlite_store(ray_head, tmp_store, tmp_path):
    """`ray job submit --working-dir <repo>` to the token-auth head, no tracking server: the job's driver joins the
    cluster through RAY_ADDRESS and logs into the absolute sqlite store given by --tracking-uri (one node)."""
    address, env = ray_head
    job = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
         sys.executable, "tune_jobs/ablation.py", "--seeds", "1", "--epochs", "1", "--width", "4",
         "--experiment", "job-submit", "--tracking-uri", tmp_store, "--storage-path", str(tmp_path / "ray-job"),
         "--quiet", "--no-aggregate", "--max-concurrent", "1"],  # one reused worker, as above
        env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    parents, children = _trial_runs(MlflowClient(tmp_store), "job-submit")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["resnet18-w4-l2-sn-lg-e1-s0", "resnet18-w4-nol2-sn-lg-e1-s0"]
    assert all(r.info.status == "FINISHED" for r in children)


# ---- the server fails: an outage longer than MLflow's retries; two sweeps at once ------------------------------------
def _admin_client(server: Server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", server.admin_password)
    return MlflowClient(server.uri)


def _trial_runs(client, experiment: str) -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100) if exp else []
    return ([r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "sweep"],
            [r for r in runs if r.data.tags.get(keys.TAG_ROLE) == "trial"])


def _assert_complete(client, experiment: str, sweeps: int, trials: int, epochs: int) -> list:
    """Every sweep and trial run FINISHED, and every metric of every trial logged once per epoch 1..epochs (OoD
    scores once per full evaluation)."""
    parents, children = _trial_runs(client, experiment)
    assert len(parents) == sweeps and {r.info.status for r in parents} == {"FINISHED"}
    assert len(children) == trials and {r.info.status for r in children} == {"FINISHED"}, \
        [(r.info.run_name, r.info.status) for r in children]
    for run in children:
        assert keys.LOSS_TRAIN in run.data.metrics
        for key in run.data.metrics:
            if key.startswith(keys.SYSTEM_PREFIX):  # MLflow's system metrics count samples, not epochs
                continue
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps in logged_steps(epochs), (run.info.run_name, key, steps)
    return children


def _waiting(text: str) -> tuple[set[int], int]:
    """What a job's TrackingUnavailable messages say waits in a trial's checkpoint (Outbox.describe): the epochs
    whose metrics wait, and the most files waiting."""
    epochs: set[int] = set()
    files = 0
    for what in re.findall(r"Not lost: (.*?) wait in this trial", text):
        for first, last in re.findall(r"metrics of epoch(?:\(s\))? (\d+)(?:\.\.(\d+))?", what):
            epochs |= set(range(int(first), int(last or first) + 1))
        files = max([files, *(int(n) for n in re.findall(r"(\d+) file\(s\)", what))])
    return epochs, files


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_outage_longer_than_the_retry_budget_loses_nothing(mlflow_server, monkeypatch, tmp_path):
    """MLflow's client retries for retry_budget() seconds (here set to 2 s through its variables). The server is
    stopped once the first epoch is logged and stays down until the job has given up (its trial ends in ERROR
    with its unlogged epochs in its Ray checkpoint; the job says how to resume); then it is started again and
    `--resume` finishes the run without a missing or a repeated step.

    One trial (L2 off): the trial's path through the outage is what is tested; several trials writing at once is
    the subject of test_two_sweeps_at_once_into_one_server_experiment. With two trials this test took 101 s alone
    and 236 s in the suite (2 cores); with one, 82 s alone and 144 s in the suite."""

    client = _admin_client(mlflow_server, monkeypatch)
    short = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    assert retry_budget(short) == 2.0
    env = job_env(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=mlflow_server.admin_password, **short)
    epochs = 4
    # --checkpoint-every 1: every epoch goes to MLflow alone (no 5-s batching), so the first flush after the stop
    # fails with that epoch's metrics, or (when the server, shutting down gracefully, still took the metric batch)
    # with only its file, waiting
    cmd = sweep_command(mlflow_server.uri, tmp_path / "ray", "outage", "--epochs", str(epochs), "--num-cpus", "2",
                        "--keep-checkpoint-epochs", "2", "--max-failures", "1", "--l2", "off",
                        "--checkpoint-every", "1")
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        job = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while not any(client.get_metric_history(r.info.run_id, keys.LOSS_TRAIN)
                      for r in _trial_runs(client, "outage")[1]):
            assert job.poll() is None and time.time() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.3)
        down_at = time.time()
        mlflow_server.stop()  # mid-trial: its first epoch is logged, the rest is still to come
        rc = job.wait(timeout=300)
    finally:
        stop_tree(job)
        up_at = time.time()
        if mlflow_server.proc.poll() is not None:
            mlflow_server.start()  # the module's other tests need it back, whatever happened above
    text = log.read_text(errors="replace")
    assert up_at - down_at > retry_budget(short)  # the outage outlasted what MLflow's retries cover
    assert rc == 2 and "TrackingUnavailable" in text, text[-5000:]
    assert "--resume" in text.split("ablation:")[-1], text[-3000:]  # the job says how to finish it
    pending, pending_files = _waiting(text)
    not_lost = [line for line in text.splitlines() if "Not lost:" in line][-3:]

    # The resume talks to a just-restarted server, maybe beside other tests: MLflow's default HTTP timeouts (the
    # short ones above only make the outage outlast the client's retries; a 10-s read timed out once under load).
    resumed = subprocess.run([*cmd, "--resume"], env={k: v for k, v in env.items() if k not in short},
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    children = _assert_complete(client, "outage", sweeps=1, trials=1, epochs=epochs)
    # What the job named as waiting in its checkpoint was written after the restart: the epochs' metrics with the
    # time they were measured (before the restart), so none was trained again; a file is checked below. Which it is
    # depends on timing (an epoch measured just before the stop, not yet sent, waits as well: FLUSH_EVERY_S; a
    # server shutting down gracefully may still take a metric batch and refuse the file after it), so it is read
    # from the job's own message rather than from the clock. A resume from an older checkpoint shows too: epochs
    # already in MLflow are not logged again (EpochReporter skips them, and their kept checkpoint file with them),
    # so the waiting epochs would come back retrained, after the restart, or the epoch-2 file would be missing.
    assert pending or pending_files, not_lost or text[-5000:]
    measured = {m.step: m.timestamp for r in children
                for m in client.get_metric_history(r.info.run_id, keys.LOSS_TRAIN)}
    late = {step: measured.get(step) for step in pending if measured.get(step, float("inf")) >= up_at * 1000}
    assert not late, (late, up_at * 1000)  # step: its timestamp (ms), or None if it never reached MLflow
    for run in children:  # the epoch checkpoint kept for the NC intervention was not lost either
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/epoch_002.pt"]
        assert {"checkpoint.pt", "summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert int(run.data.tags[keys.TAG_RESTARTS]) >= 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_sweeps_at_once_into_one_server_experiment(mlflow_server, monkeypatch, tmp_path):
    """Two ablation jobs started together into one experiment of the PostgreSQL-backed server (2 x 2 trials
    writing at once; the sqlite case with 8 writers is tests/test_concurrency.py)."""

    client = _admin_client(mlflow_server, monkeypatch)
    env = job_env(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=mlflow_server.admin_password)
    jobs = []
    for i in range(2):
        cmd = sweep_command(mlflow_server.uri, tmp_path / f"ray{i}", "pg-concurrent", "--num-cpus", "2")
        jobs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [j.communicate(timeout=500)[0] for j in jobs]
    finally:
        for j in jobs:
            stop_tree(j)
    for j, out in zip(jobs, outputs):
        assert j.returncode == 0, out[-5000:]
    _assert_complete(client, "pg-concurrent", sweeps=2, trials=4, epochs=2)
