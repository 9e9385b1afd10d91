"""Set-up shared by the test modules: the Fashion-MNIST package, a module's sqlite MLflow store, a local Ray.

Fashion-MNIST comes from Debian's package `dataset-fashion-mnist` (30 MB), which CI (`make test` on a clean clone,
as root) installs here, before the first test, so that every test sweeping the dataset registry (tests/test_data.py)
reads the real files too. Where installing is impossible (not root, no apt-get, no mirror) nothing is skipped:
the Fashion-MNIST tests fail with the loader's error, which names the install command.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ncood.data import fashion_mnist


@pytest.fixture(scope="session", autouse=True)
def fashion_mnist_package() -> str | None:
    """None when the package's files are there (installed now if needed), else why they could not be installed."""
    try:
        fashion_mnist.install_debian_package()  # a no-op when the files are present
    except RuntimeError as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory) -> tuple[str, Path]:
    """(tracking URI, folder) of a fresh sqlite MLflow store for one test module. Its schema is created here, once
    (about 10 s of MLflow's migrations); tests use experiments of their own in it."""
    from ncood import tracking

    root = tmp_path_factory.mktemp("store")
    uri = tracking.resolve_tracking_uri(str(root / "mlflow.db"))
    tracking.prepare_experiment("schema", uri)
    return uri, root


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
