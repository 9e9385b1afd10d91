"""Session set-up shared by the test modules.

Fashion-MNIST comes from Debian's package `dataset-fashion-mnist` (30 MB), which CI (`make test` on a clean clone,
as root) installs here, before the first test, so that every test sweeping the dataset registry (tests/test_data.py)
reads the real files too. Where installing is impossible (not root, no apt-get, no mirror) nothing is skipped:
the Fashion-MNIST tests fail with the loader's error, which names the install command.
"""
from __future__ import annotations

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
