#!/usr/bin/env bash
# Start the shared MLflow tracking server: PostgreSQL backend store, proxied artifact store, basic-auth on.
#
#   set -a; . /etc/ncood/mlflow-server.env; set +a; deploy/mlflow/start-server.sh       # on a VM
#
# The same script is the command of the `mlflow` service in compose.yaml and of the integration test
# (tests/test_deploy.py). Secrets come from the environment or from files (VAR_FILE=path, e.g. Docker
# secrets); none is ever written into the repository.
#
#   MLFLOW_DB_HOST / MLFLOW_DB_PORT    PostgreSQL server (default 127.0.0.1 / 5432)
#   MLFLOW_DB_USER                     role (default mlflow)
#   MLFLOW_DB_PASSWORD[_FILE]          its password (required)
#   MLFLOW_DB_NAME                     tracking store database (default mlflow)
#   MLFLOW_AUTH_DB_NAME                basic-auth user store database (default mlflow_auth)
#   MLFLOW_ARTIFACTS_DESTINATION       where artifacts live: s3://bucket/prefix, or an absolute path on shared
#                                      storage (NFS). Clients upload through the server (mlflow-artifacts:/),
#                                      so only the server needs storage credentials (e.g. AWS_* for S3, + boto3).
#   MLFLOW_AUTH_ADMIN_USERNAME         admin user created on first start (default admin)
#   MLFLOW_AUTH_ADMIN_PASSWORD[_FILE]  its password (required on first start; read by MLflow itself)
#   MLFLOW_FLASK_SERVER_SECRET_KEY[_FILE]  CSRF key of the auth app (required; same on every replica)
#   MLFLOW_AUTH_CONFIG_PATH            an auth .ini of your own; by default one is written (mode 600) to
#                                      MLFLOW_RUN_DIR (default: a new private temp dir)
#   MLFLOW_AUTH_DEFAULT_PERMISSION     what users get on experiments they did not create (default READ)
#   MLFLOW_AUTH_CACHE_TTL_SECONDS      cache a verified password this long (default 60; 0 = MLflow's default,
#                                      off). Each check is a deliberately slow hash (~0.1-0.2 s of CPU) and a trial
#                                      makes hundreds of requests: off, the hashing dominates the server's time. The
#                                      price: a changed or deleted password keeps working on the other workers for
#                                      up to this long.
#   MLFLOW_HOST / MLFLOW_PORT          bind address / port (default 127.0.0.1 / 5000; 0.0.0.0 behind a proxy)
#   MLFLOW_WORKERS                     server worker processes (default 4)
#   MLFLOW_ALLOWED_HOSTS               Host headers to accept besides MLflow's defaults (--allowed-hosts, comma-
#                                      separated, * wildcards: the proxy's name, e.g. mlflow.example.internal;
#                                      name:* if the proxy forwards a port). The defaults (localhost, 127.0.0.1,
#                                      [::1], 0.0.0.0, each with any port; the private IP ranges) are appended:
#                                      MLflow's own --allowed-hosts replaces them.
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's server-side job runner (GenAI evaluation; 7 extra processes):
#                                      ncood does not use it, so default false here
set -euo pipefail

# VAR_FILE -> VAR for every secret (a value set directly wins).
for var in MLFLOW_DB_PASSWORD MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
  file_var="${var}_FILE"
  if [[ -z "${!var:-}" && -n "${!file_var:-}" ]]; then
    export "$var"="$(<"${!file_var}")"
  fi
done
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD or MLFLOW_DB_PASSWORD_FILE}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY or _FILE (e.g. openssl rand -hex 32)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix or /shared/mlartifacts)}"
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-admin}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

MLFLOW=${MLFLOW:-mlflow}
# MLflow 3.17 checks the Host header of every request but /health and /version against --allowed-hosts, and a
# value there REPLACES its defaults (mlflow/server/security.py: `get_allowed_hosts_from_env() or
# get_default_allowed_hosts()`): with the proxy's name alone, http://127.0.0.1:5000 on this VM (and a proxy that
# forwards Host: 127.0.0.1:5000) got 403 "Invalid Host header". So the defaults are appended, as
# mlflow/server/security_utils.py's get_default_allowed_hosts() lists them (fnmatch patterns; tests/
# test_deploy_files.py checks this list against the installed MLflow's).
mlflow_default_hosts="localhost,127.0.0.1,[::1],0.0.0.0,localhost:*,127.0.0.1:*,[[]::1]:*,0.0.0.0:*,192.168.*,10.*"
mlflow_default_hosts+=",$(printf '172.%s.*,' {16..31})fc00:*,fd00:*"
allowed_hosts=${MLFLOW_ALLOWED_HOSTS:-}
if [[ -n "$allowed_hosts" && "$allowed_hosts" != "*" ]]; then
  allowed_hosts+=",$mlflow_default_hosts"
fi
# Driver psycopg (3), named in the URI. The DB password reaches libpq as PGPASSWORD: it stays out of the URIs,
# hence out of `ps`, the server log and the auth .ini.
export PGPASSWORD="$MLFLOW_DB_PASSWORD"
db_server="${MLFLOW_DB_USER:-mlflow}@${MLFLOW_DB_HOST:-127.0.0.1}:${MLFLOW_DB_PORT:-5432}"
backend_uri="postgresql+psycopg://${db_server}/${MLFLOW_DB_NAME:-mlflow}"
auth_db_uri="postgresql+psycopg://${db_server}/${MLFLOW_AUTH_DB_NAME:-mlflow_auth}"

if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
  # The auth app reads its user-store URI from an .ini (MLFLOW_AUTH_CONFIG_PATH): write one of our own.
  run_dir=${MLFLOW_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mlflow-server-XXXXXX")}
  mkdir -p "$run_dir"
  export MLFLOW_AUTH_CONFIG_PATH="$run_dir/basic_auth.ini"
  (
    umask 077
    cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${auth_db_uri}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL_SECONDS:-60}
INI
  )
fi
if [[ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]]; then
  echo "start-server.sh: MLFLOW_AUTH_ADMIN_PASSWORD unset: fine once the admin user exists, fatal on first start" >&2
fi

echo "start-server.sh: mlflow server on ${MLFLOW_HOST:-127.0.0.1}:${MLFLOW_PORT:-5000}," \
     "store ${backend_uri}, users ${auth_db_uri}," \
     "artifacts ${MLFLOW_ARTIFACTS_DESTINATION}, auth config ${MLFLOW_AUTH_CONFIG_PATH}" >&2
exec "$MLFLOW" server \
  --app-name basic-auth \
  --backend-store-uri "$backend_uri" \
  --serve-artifacts \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  ${allowed_hosts:+--allowed-hosts "$allowed_hosts"}
