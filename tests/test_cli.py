"""Every entry point as a user starts it (a fresh interpreter): `--help` exits 0 and says what it should, `--version`
prints the package version, the registered names in `--help` are the registries' own, and one spelling of boolean
flags (`--l2 on|off`) in `ncood train` and the grid scripts. No timing assertion: `--help` stays fast because the
entry points import torch, Ray and MLflow after parsing; tests/test_cli.py::test_help_imports_no_heavy_library checks
that directly (which modules got imported), not the clock.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ncood
from ncood import registry_names
from tests.job_scripts import load_job

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {  # argv after the interpreter -> words its --help must contain
    ("-m", "ncood"): ["train", "aggregate", "register", "serve", "datasets", "models", "--version"],
    ("-m", "ncood", "train"): ["--preset", "--l2 [on|off]", "resnet18", "cifar10", "--arch"],
    ("-m", "ncood", "aggregate"): ["--experiment", "--parent-run"],
    ("-m", "ncood", "register"): ["--experiment", "--alias"],
    ("-m", "ncood", "serve"): ["--model-uri", "scorer@champion", "--tracking-uri"],
    ("-m", "ncood", "data", "link"): ["fashion-mnist", "--data-root"],
    ("tune_jobs/ablation.py",): ["--preset", "--l2 off|on", "--dashboard", "--no-register", "--version", "resnet18"],
    ("tune_jobs/search.py",): ["--keep-checkpoint-epochs", "default: none", "--dashboard"],
    ("tune_jobs/nc_intervention.py",): ["--from-epoch", "--dashboard", "--version"],
    ("tune_jobs/aggregate.py",): ["--experiment", "--resamples"],
}
HEAVY = ("torch", "ray", "mlflow", "pandas", "matplotlib")


def _run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv", list(ENTRY_POINTS), ids=" ".join)
def test_help(argv):
    proc = _run(*argv, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for word in ENTRY_POINTS[argv]:
        assert word in text, (word, proc.stdout)


@pytest.mark.parametrize("argv", list(ENTRY_POINTS), ids=" ".join)
def test_help_imports_no_heavy_library(argv):
    """What keeps --help under a second: no torch, Ray, MLflow, pandas or matplotlib before parsing."""
    script = argv[0] if argv[0] != "-m" else None
    run = (f"import runpy; sys.argv = {[script or 'ncood', *argv[1 if script else 2:], '--help']!r}; "
           + (f"runpy.run_path({script!r}, run_name='__main__')" if script else "runpy.run_module('ncood', run_name='__main__')"))
    code = (f"import sys\ntry:\n    {run}\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]


@pytest.mark.parametrize("argv", [("-m", "ncood"), ("tune_jobs/ablation.py",), ("tune_jobs/search.py",),
                                  ("tune_jobs/nc_intervention.py",), ("tune_jobs/aggregate.py",)], ids=" ".join)
def test_version(argv):
    proc = _run(*argv, "--version")
    assert proc.returncode == 0 and f"ncood {ncood.__version__}" in proc.stdout, proc.stdout + proc.stderr


def test_pyproject_takes_the_version_from_the_package():
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "ncood.__version__"' in text and 'license = "MIT"' in text


def test_registered_names_are_the_registries():
    from ncood.data import list_datasets
    from ncood.models import list_models

    assert list(registry_names.model_names()) == list_models()
    assert list(registry_names.dataset_names()) == sorted(list_datasets())
    assert list(registry_names.dataset_names(id_only=True)) == sorted(list_datasets(id_only=True))


def test_datasets_and_models_exit_0():
    for cmd, expect in (("datasets", "noise"), ("models", "resnet18")):
        proc = _run("-m", "ncood", cmd)
        assert proc.returncode == 0 and expect in proc.stdout, proc.stderr


def test_one_boolean_spelling():
    """`--l2 on|off` in ncood train and the grid scripts (a bare --l2 means on); --no-l2 is gone."""
    from ncood import cli

    parse = lambda *a: cli.build_parser(["train"]).parse_args(["train", *a])  # noqa: E731
    assert parse("--l2").l2 is True and parse("--l2", "on").l2 is True and parse("--l2", "off").l2 is False
    assert parse("--download", "off").download is False and parse().l2 is None
    with pytest.raises(SystemExit):
        parse("--no-l2")
    grid = load_job("ablation").build_parser()
    from ncood.tune import jobs

    assert jobs.overrides_from_args(grid.parse_args(["--l2", "off", "on", "--download", "on"]))["l2"] == [False, True]
    assert jobs.overrides_from_args(grid.parse_args(["--l2", "off,on"]))["l2"] == [False, True]
    assert grid.parse_args(["--download", "on"]).download is True
    assert grid.parse_args(["--compile"]).compile is True
    with pytest.raises(SystemExit):
        grid.parse_args(["--download", "maybe"])


def test_intervention_has_no_checkpoint_flags():
    """Its continuation trials keep no Ray checkpoints: the flags that did nothing are gone."""
    parser = load_job("nc_intervention").build_parser()
    for flag in ("--checkpoint-every", "--keep-checkpoint-epochs"):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, "1"])
