#!/usr/bin/env bash
# Create the MLflow role and its two databases (idempotent): the tracking store and the basic-auth user store.
#
#   PGHOST=... PGPORT=5432 PGUSER=postgres MLFLOW_DB_PASSWORD_FILE=/etc/mlflow/db_password \
#     deploy/mlflow/init-db.sh
#
# Connects as a PostgreSQL superuser through the usual libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD;
# on a VM: `sudo -u postgres deploy/mlflow/init-db.sh` uses the local socket). Also runs unchanged as a
# /docker-entrypoint-initdb.d script of the postgres image (compose.yaml).
#   MLFLOW_DB_USER       role MLflow logs in as                     (default mlflow)
#   MLFLOW_DB_PASSWORD   its password, or MLFLOW_DB_PASSWORD_FILE   (required; a re-run resets it; FILE may be
#                        `-` or /dev/stdin: the password piped in)
#   MLFLOW_DB_NAME       tracking store database                    (default mlflow)
#   MLFLOW_AUTH_DB_NAME  basic-auth users/permissions database      (default mlflow_auth)
set -euo pipefail

if [[ -z "${MLFLOW_DB_PASSWORD:-}" && -n "${MLFLOW_DB_PASSWORD_FILE:-}" ]]; then
  if [[ "$MLFLOW_DB_PASSWORD_FILE" == - || "$MLFLOW_DB_PASSWORD_FILE" == /dev/stdin ]]; then
    # Read the inherited fd 0, never reopen /dev/stdin (= /proc/self/fd/0): after `... | sudo -u postgres` the
    # pipe belongs to root with mode 0600, so the postgres user may read it but not open it again.
    MLFLOW_DB_PASSWORD=$(cat)
  else
    MLFLOW_DB_PASSWORD=$(<"$MLFLOW_DB_PASSWORD_FILE")
  fi
fi
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD or MLFLOW_DB_PASSWORD_FILE}"
db_user=${MLFLOW_DB_USER:-mlflow}

# UTF8 whatever the cluster's default (a cluster made without a locale is SQL_ASCII, which the psycopg driver
# returns as bytes and SQLAlchemy cannot read).
# Values reach SQL only as psql variables (:'x' quotes a literal, :"x" an identifier), never spliced into SQL text.
# The password goes through stdin (psql's own quoting: \\ and '' inside '...'), so it never shows in `ps`.
pw=${MLFLOW_DB_PASSWORD//\\/\\\\}
pw=${pw//\'/\'\'}
psql -v ON_ERROR_STOP=1 -X -q -d postgres \
  -v user="$db_user" -v db="${MLFLOW_DB_NAME:-mlflow}" -v authdb="${MLFLOW_AUTH_DB_NAME:-mlflow_auth}" <<SQL
\\set pw '${pw}'
SELECT format('CREATE ROLE %I LOGIN', :'user') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user')
\\gexec
ALTER ROLE :"user" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8'' TEMPLATE template0', :'db', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')
\\gexec
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8'' TEMPLATE template0', :'authdb', :'user')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'authdb')
\\gexec
SQL
echo "init-db.sh: role ${db_user}, databases ${MLFLOW_DB_NAME:-mlflow} and ${MLFLOW_AUTH_DB_NAME:-mlflow_auth} ready"
