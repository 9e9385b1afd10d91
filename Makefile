# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Both create .venv and install ncood with its dependencies on first use (pip, from the package registry).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: run test install clean-runs

# Bytecode: pip compiles the ~21,500 installed modules in one process (~70 s of CPU: torch, Ray, MLflow, ...);
# compileall does the same work on every core. Like pip, it goes on past files it cannot compile, quietly (torch has
# tests written for Python 3.12, so its exit status is never 0 here): importing such a file would fail either way,
# and a file left uncompiled still imports, only more slowly.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	$(PY) -W ignore::SyntaxWarning -m compileall -qq -j 0 \
	  "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $@

install: $(VENV)/.installed

# The default ablation grid: local Ray, MLflow in mlruns/, built-in digits data, 15 seeds x L2 off/on. It ends by
# registering the champion (ncood-ood-scorer@champion: `.venv/bin/ncood serve` serves it) and printing the summary.
run: $(VENV)/.installed
	$(PY) tune_jobs/ablation.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean-runs:
	rm -rf runs mlruns/mlflow.db mlruns/artifacts
