#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries are on this (Debian/Ubuntu) machine; print their folder.
#
#   sudo deploy/mlflow/install-postgres.sh        # -> /usr/lib/postgresql/15/bin
#
# Installs the distribution's `postgresql` package with apt-get when no initdb is found (needs root and a
# package mirror). Debian keeps initdb/pg_ctl out of PATH, in /usr/lib/postgresql/<major>/bin. The package
# also creates and starts the system cluster `main` on port 5432; ncood's tests never use it (they start a
# throwaway cluster in a temp dir), a VM tracking server may (deploy/README.md, step 1).
set -euo pipefail

find_bindir() {
  local found
  found=$(command -v initdb 2>/dev/null || true)
  if [[ -n "$found" ]]; then dirname "$(readlink -f "$found")"; return 0; fi
  found=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)  # the newest major version
  if [[ -n "$found" && -x "$found/initdb" ]]; then echo "$found"; return 0; fi
  return 1
}

if bindir=$(find_bindir); then
  echo "$bindir"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-postgres.sh: PostgreSQL is not installed and this is not root: run it with sudo," \
       "or apt-get install postgresql yourself" >&2
  exit 3
fi
if ! command -v apt-get >/dev/null; then
  echo "install-postgres.sh: no apt-get here; install PostgreSQL (>= 13) with this system's package manager" >&2
  exit 3
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-postgres.sh: installing postgresql with apt-get (about a minute)" >&2
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends postgresql postgresql-client >&2
find_bindir
