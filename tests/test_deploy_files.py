"""deploy/, statically: every YAML file parses; the cluster launcher config passes Ray's own schema (as `ray up`
checks it); every flag the deploy files give to `mlflow server`, `ray start`, `ray job submit`, `ray up`,
`ray dashboard` and `tune_jobs/ablation.py` is listed by that command's `--help` in the pinned versions (flags are
extracted from the files, not listed here); compose secrets, mounts and images resolve, and no secret value is
inline. The servers and jobs themselves run in tests/test_deploy.py.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from job_scripts import load_job

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent  # the venv's mlflow and ray

# ---- static checks: flags ------------------------------------------------------------------------------------------
# command -> (where an invocation starts, the help that must list its flags (None: the job's own argparse help),
# a file that must invoke it, with flags or not: so the check can never pass vacuously)
COMMANDS = {
    "mlflow server": (r'(?:\bmlflow|"\$MLFLOW")\s+server\b', ("mlflow", "server"), "mlflow/start-server.sh", True),
    "ray start": (r"\bray\s+start\b", ("ray", "start"), "ray/cluster.yaml", True),
    "ray job submit": (r"\bray\s+job\s+submit\b", ("ray", "job", "submit"), "README.md", True),
    "ray up": (r"\bray\s+up\b", ("ray", "up"), "README.md", False),
    "ray dashboard": (r"\bray\s+dashboard\b", ("ray", "dashboard"), "README.md", False),
    "ablation.py": (r"\btune_jobs/ablation\.py\b", None, "ray/rayjob.yaml", True),
}
# Where a command's arguments end: shell separators, a `--` before a job entrypoint, a comment, inline code.
_END = re.compile(r"\s--\s|\s--$|&&|\|\||[;|`]|\s#")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "secrets" not in p.parts)


def _strings(node) -> list[str]:
    """Every string (keys and values) in parsed YAML: folded command lines come back joined."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _command_lines(path: Path) -> list[str]:
    """Logical lines of a deploy file: backslash continuations joined; for YAML also every parsed string."""
    text = path.read_text()
    lines = text.replace("\\\n", " ").splitlines()
    if path.suffix in (".yaml", ".yml"):
        lines += [ln for s in _strings(list(yaml.safe_load_all(text))) for ln in s.replace("\\\n", " ").splitlines()]
    return lines


def _invocations(name: str) -> dict[str, set[str]]:
    """{file (relative): flags given to command `name` there} for every deploy file that invokes it."""
    pattern = re.compile(COMMANDS[name][0])
    found: dict[str, set[str]] = {}
    for path in _deploy_files():
        for line in _command_lines(path):
            for m in pattern.finditer(line):
                rest = line[m.end():]
                end = _END.search(rest)
                flags = set(_FLAG.findall(rest[:end.start()] if end else rest))
                found.setdefault(str(path.relative_to(DEPLOY)), set()).update(flags)
    return found


@lru_cache(maxsize=None)
def _help(name: str) -> str:
    argv = COMMANDS[name][1]
    if argv is None:
        return _ablation_parser().format_help()
    out = subprocess.run([str(BIN / argv[0]), *argv[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _ablation_parser():
    return load_job("ablation").build_parser()


def _listed(flag: str, help_text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_deploy_files_use_only_existing_flags(name):
    found, (_, _, where, with_flags) = _invocations(name), COMMANDS[name]
    assert where in found, f"no `{name}` invocation found in {where}"
    assert found[where] or not with_flags, f"`{name}` in {where}: no flags extracted"
    help_text = _help(name)  # also: the (sub)command exists in the pinned version
    unknown = {f"{file}: {flag}" for file, flags in found.items() for flag in flags if not _listed(flag, help_text)}
    assert not unknown, f"flags that `{name} --help` does not list: {sorted(unknown)}"


def test_yaml_files_parse():
    files = [p for p in _deploy_files() if p.suffix in (".yaml", ".yml")]
    assert {p.name for p in files} >= {"compose.yaml", "cluster.yaml", "rayjob.yaml"}
    for path in files:
        assert all(doc is not None for doc in yaml.safe_load_all(path.read_text())), path


def test_cluster_launcher_config_passes_ray_schema():
    """What `ray up` does first: fill in the provider defaults, then validate against ray-schema.json."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:  # the MLflow credentials and RAY_AUTH_MODE reach the raylet (and so every trial)
            assert "ncood-node.env" in cmd
    assert "~/ncood-node.env" in config["file_mounts"] and "~/.ray/auth_token" in config["file_mounts"]
    assert "node.env" in (DEPLOY / "ray" / ".gitignore").read_text().split()
    env_example = (DEPLOY / "ray" / "node.env.example").read_text()
    for var in ("RAY_AUTH_MODE=token", "MLFLOW_TRACKING_URI=", "MLFLOW_TRACKING_USERNAME=",
                "MLFLOW_TRACKING_PASSWORD="):
        assert var in env_example


def test_rayjob_manifest():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "ray" / "rayjob.yaml").read_text())}
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("tune_jobs/ablation.py")
    try:
        args = _ablation_parser().parse_args(argv[2:])  # values too: a typo in --preset fails here
    except SystemExit:
        pytest.fail(f"tune_jobs/ablation.py rejects the RayJob entrypoint (its error is printed above): {argv}")
    assert args.preset == "table1" and args.gpus_per_trial and args.storage_path.startswith("/mnt/ncood")
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http") and "MLFLOW_TRACKING_PASSWORD" not in env
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60") and cluster["authOptions"]["mode"] == "token"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    start_help = _help("ray start")
    claim = docs["PersistentVolumeClaim"]["metadata"]["name"]
    for group in groups:
        for key in group["rayStartParams"]:
            assert _listed(f"--{key}", start_help), f"rayStartParams {key}: not a `ray start` flag"
        pod = group["template"]["spec"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in pod["volumes"])
        for c in pod["containers"]:
            env_names = {e["name"]: e for e in c["env"]}
            for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert "secretKeyRef" in env_names[var]["valueFrom"], var  # from a Secret, never inline
            assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/mnt/ncood"}
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"])


def test_compose_file():
    """Secrets come from git-ignored files, mounts and build inputs exist, every MLFLOW_* variable is one that
    start-server.sh, init-db.sh or MLflow reads."""
    import mlflow.environment_variables as mlflow_env

    folder = DEPLOY / "mlflow"
    compose = yaml.safe_load((folder / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow"} <= set(services)
    assert "secrets/" in (folder / ".gitignore").read_text().split()
    for name, secret in compose["secrets"].items():
        assert secret["file"].startswith("./secrets/"), name
    scripts = (folder / "start-server.sh").read_text() + (folder / "init-db.sh").read_text()
    for name, service in services.items():
        assert "image" in service or (folder / service["build"] / "Dockerfile").exists(), name
        assert set(service.get("secrets", [])) <= set(compose["secrets"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose["volumes"] or (folder / source).exists(), f"{name}: {volume}"
        for var, value in service.get("environment", {}).items():
            if re.search(r"PASSWORD|SECRET", var) and not var.endswith("_FILE"):
                pytest.fail(f"{name}: {var} set inline; pass it as a secret file ({var}_FILE)")
            if var.startswith("MLFLOW_"):  # `X[_FILE]`: start-server.sh reads X or the file named by X_FILE
                known = var in scripts or f"{var.removesuffix('_FILE')}[_FILE]" in scripts or hasattr(mlflow_env, var)
                assert known, f"{name}: {var} is read by nothing"
    dockerfile = (folder / "Dockerfile").read_text()
    assert services["mlflow"]["command"][0] in dockerfile  # the script the image installs
    for port in services["mlflow"]["ports"]:
        assert port.startswith("127.0.0.1:"), "publish on loopback; a TLS proxy exposes it"


def test_ray_image_copies_what_exists():
    dockerfile = (DEPLOY / "ray" / "Dockerfile").read_text()
    allowed = (DEPLOY / "ray" / "Dockerfile.dockerignore").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            for src in [w for w in line.split()[1:-1] if not w.startswith("--")]:
                assert (REPO / src).exists(), src
                assert f"!{src}" in allowed or f"!{src}/" in allowed, f"{src} is not in the build context"


def test_start_server_keeps_mlflows_default_hosts_beside_the_proxy_name(tmp_path):
    """MLFLOW_ALLOWED_HOSTS as mlflow-server.env.example sets it (the proxy's name) must not lock out 127.0.0.1:
    MLflow's --allowed-hosts replaces its default hosts, so start-server.sh appends them (exactly the installed
    MLflow's list). `mlflow` is a script here that prints the arguments start-server.sh passes; the real server
    with this setting: tests/test_deploy.py."""
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    fake = tmp_path / "mlflow"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "MLFLOW": str(fake), "MLFLOW_DB_PASSWORD": "x", "MLFLOW_AUTH_ADMIN_PASSWORD": "x",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "x", "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
           "MLFLOW_RUN_DIR": str(tmp_path / "run")}

    def allowed_hosts(value: str | None) -> list[str] | None:
        out = subprocess.run(["bash", str(DEPLOY / "mlflow" / "start-server.sh")], capture_output=True, text=True,
                             env={**env, **({"MLFLOW_ALLOWED_HOSTS": value} if value is not None else {})}, timeout=60)
        assert out.returncode == 0, out.stderr
        argv = out.stdout.splitlines()
        return argv[argv.index("--allowed-hosts") + 1].split(",") if "--allowed-hosts" in argv else None

    example = (DEPLOY / "mlflow" / "mlflow-server.env.example").read_text()
    proxy = re.search(r"^MLFLOW_ALLOWED_HOSTS=(.+)$", example, re.M).group(1)
    hosts = allowed_hosts(proxy)
    assert hosts[0] == proxy and hosts[1:] == get_default_allowed_hosts()
    for host in (proxy, "127.0.0.1:5000", "localhost:5000", "10.0.0.7:5000"):
        assert is_allowed_host_header(hosts, host), host
    assert not is_allowed_host_header(hosts, "rebound.example")
    assert allowed_hosts(None) is None and allowed_hosts("") is None  # no flag: MLflow's defaults as they are
    assert allowed_hosts("*") == ["*"]  # every host (MLflow warns), nothing to append


# ---- deploy/serving/client.py without a server ---------------------------------------------------------------------
def _client(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DEPLOY / "serving" / "client.py"), *argv], capture_output=True,
                          text=True, timeout=60)


def test_serving_client_names_a_missing_file_before_any_request(tmp_path):
    image = tmp_path / "ok.png"
    image.write_bytes(b"\x89PNG")
    # port 9 (discard) on loopback: nothing listens, so reaching the request would say "cannot reach" instead
    proc = _client(str(image), str(tmp_path / "typo.png"), "--url", "http://127.0.0.1:9")
    assert proc.returncode == 2 and f"not a file: {tmp_path / 'typo.png'}" in proc.stderr, proc.stderr
    proc = _client(str(image), "--url", "http://127.0.0.1:9")
    assert proc.returncode == 1 and "cannot reach http://127.0.0.1:9" in proc.stderr, proc.stderr
