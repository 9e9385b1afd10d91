"""Set-up shared by the test modules: the Fashion-MNIST package, sqlite MLflow stores, a local Ray, the modules' order.

Fashion-MNIST comes from Debian's package `dataset-fashion-mnist` (30 MB), which CI (`make test` on a clean clone,
as root) installs here, before the first test, so that every test sweeping the dataset registry (tests/test_data.py)
reads the real files too. Where installing is impossible (not root, no apt-get, no mirror) nothing is skipped:
the Fashion-MNIST tests fail with the loader's error, which names the install command.

The suite runs in pytest-xdist workers (pyproject's addopts): session fixtures run once per worker, so whatever
installs with apt-get (this package, PostgreSQL for tests/test_deploy.py, Chromium for tests/test_browser.py) holds
`apt_lock` first: two apt-get runs at once fail on dpkg's lock instead of waiting for it.
"""
from __future__ import annotations

import contextlib
import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported: see pytest_configure
    os.environ["OMP_NUM_THREADS"] = "1"
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock

from ncood.data import fashion_mnist


def _run_shared_dir(tmp_path_factory) -> Path:
    """A folder of this test run that every xdist worker shares (pytest-<n>/ above the workers' base temp dirs);
    the run's own base temp dir without xdist (its parent would outlive the run and its package versions)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_configure(config) -> None:
    """One torch (OpenMP) thread per xdist worker, and in the processes its tests start (OMP_NUM_THREADS, set above).
    Two workers on 2 cores with torch's default of one thread per core oversubscribe them, and OpenMP's spin-waiting
    threads stall each other: an in-process digits training took 20x longer (tests/test_train.py, measured)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def apt_lock(tmp_path_factory):
    """A context manager: held while one xdist worker (or the single process) installs with apt-get. The lock file
    sits in the folder the workers share."""
    shared = _run_shared_dir(tmp_path_factory)
    return lambda: FileLock(str(shared / "ncood-apt.lock"), timeout=1800)  # s: a slow mirror, not forever


@pytest.fixture(scope="session", autouse=True)
def fashion_mnist_package(apt_lock) -> str | None:
    """None when the package's files are there (installed now if needed), else why they could not be installed."""
    try:
        with apt_lock():
            fashion_mnist.install_debian_package()  # a no-op when the files are present
    except RuntimeError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def new_store(tmp_path_factory) -> Callable[[Path], str]:
    """new_store(folder) -> the tracking URI of a sqlite MLflow store at folder/mlflow.db, schema included.

    MLflow creates a new database's schema by running its migrations (5-15 s on 2 cores): done here once per test
    run, in a template store (xdist workers: the first one under a file lock, the others reuse it), which every
    store is then a copy of (the WAL checkpointed into the file first: the copy is complete and stays in WAL
    mode). Tests about creating a store (tests/test_concurrency.py) start from nothing."""
    from ncood import tracking

    template = _run_shared_dir(tmp_path_factory) / "ncood-store-template" / "mlflow.db"
    with FileLock(str(template.parent) + ".lock", timeout=600):
        if not template.exists():
            building = template.parent.with_name("ncood-store-building") / "mlflow.db"
            tracking.prepare_experiment("schema", tracking.resolve_tracking_uri(str(building)))
            with contextlib.closing(sqlite3.connect(building)) as con:
                busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0, "the template store's WAL could not be checkpointed (a connection still open?)"
            template.parent.mkdir(exist_ok=True)
            shutil.copyfile(building, template.with_suffix(".part"))
            os.replace(template.with_suffix(".part"), template)  # whole or absent

    def copy(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, folder / "mlflow.db")
        return tracking.resolve_tracking_uri(str(folder / "mlflow.db"))

    return copy


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory, new_store) -> tuple[str, Path]:
    """(tracking URI, folder) of a sqlite MLflow store for one test module (a copy of the run's template store);
    tests use experiments of their own in it."""
    root = tmp_path_factory.mktemp("store")
    return new_store(root), root


@pytest.fixture
def tmp_store(tmp_path, new_store) -> str:
    """The tracking URI of a sqlite MLflow store in the test's tmp_path (tmp_path/mlflow.db)."""
    return new_store(tmp_path)


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray with 2 CPUs for one test module (never a cluster someone else started), shut down after."""
    import ray

    from ncood.tune import init_ray

    saved = os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


def pytest_collection_modifyitems(config, items) -> None:
    """Modules with the most `slow` tests first, each module's tests kept together and in file order.

    xdist (`--dist loadfile --no-loadscope-reorder`, pyproject's addopts) hands whole modules to its two workers in
    this order: starting the long modules first (longest-processing-time-first scheduling) keeps one worker from
    taking a 4-minute module while the other runs out of work. A single-process run is unaffected but for the
    order of modules: module fixtures still set up once per module."""
    slow: dict[Path, int] = {}
    first: dict[Path, int] = {}
    for i, item in enumerate(items):
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
        first.setdefault(item.path, i)
    items.sort(key=lambda item: (-slow[item.path], first[item.path]))  # stable: file order within a module
