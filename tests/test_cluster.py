"""The sqlite-on-a-cluster guard rail on real Ray clusters: a two-node cluster on this machine (Ray's own
ray.cluster_utils.Cluster: a head and a second raylet with their own resources) warns, a one-node one does not.
The local Ray that init_ray starts runs no Python worker that nothing asked for."""
from __future__ import annotations

import os
import warnings

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from ncood.tune.cluster import (PRESTART_ENV, SqliteOnClusterWarning, alive_nodes, init_ray,
                                sqlite_on_cluster_message, warn_if_sqlite_on_cluster)

SQLITE = "sqlite:////tmp/ncood-test/mlflow.db"


def test_message_names_the_server_alternative():
    text = sqlite_on_cluster_message(SQLITE, 2)
    assert SQLITE in text and "2 nodes" in text and "deploy/" in text and "--tracking-uri https://" in text
    assert sqlite_on_cluster_message(SQLITE, 1) is None
    assert sqlite_on_cluster_message("https://mlflow.example.internal", 5) is None


@pytest.fixture
def fresh_ray():
    """No Ray in this process before or after (other modules start and stop their own)."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()
    yield
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_node_cluster_warns_one_node_does_not(fresh_ray):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        ray.init(address=cluster.address)
        assert alive_nodes() == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error", SqliteOnClusterWarning)  # a warning here fails the test
            assert not warn_if_sqlite_on_cluster(SQLITE)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        assert alive_nodes() == 2
        with pytest.warns(SqliteOnClusterWarning, match=r"sqlite file, but this Ray cluster has 2 nodes.*deploy/"):
            assert warn_if_sqlite_on_cluster(SQLITE)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SqliteOnClusterWarning)
            assert not warn_if_sqlite_on_cluster("http://127.0.0.1:5000")  # a server is what a cluster needs
    finally:
        ray.shutdown()
        cluster.shutdown()


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per-node agents, not workers


def _python_workers() -> list[str]:
    """Titles of the Ray workers under this process (its local Ray's raylet starts them; a worker is titled
    `ray::IDLE` or `ray::<actor class>` once it runs, default_worker.py before)."""
    titles = []
    for proc in psutil.Process().children(recursive=True):
        try:
            argv = proc.cmdline()
        except psutil.Error:  # gone meanwhile
            continue
        if not argv:  # a zombie
            continue
        title = " ".join(argv)
        starting = os.path.basename(argv[0]).startswith("python") and any(a.endswith("default_worker.py") for a in argv)
        if (title.startswith("ray::") and not title.startswith(RAY_AGENTS)) or starting:
            titles.append(title.split()[0])
    return titles


@ray.remote(num_cpus=1)
class _Pinger:
    def ping(self) -> int:
        return os.getpid()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_ray_starts_no_idle_workers(fresh_ray, monkeypatch):
    """Ray's raylet prestarts num_cpus workers when a driver registers; in a sweep Tune's trial actors did not run
    on them (each cost ~0.6 s of CPU for nothing). init_ray turns that off: after one actor is up, its worker is
    the only one. The prestart requests go out at the driver's registration, before the actor's, so their processes
    would exist by then (with the prestart this test sees ['ray::IDLE', 'ray::_Pinger'])."""
    monkeypatch.setenv(PRESTART_ENV, "")  # so that teardown restores whatever was there
    monkeypatch.delenv(PRESTART_ENV)
    init_ray(num_cpus=2)
    assert PRESTART_ENV not in os.environ  # given to the raylet, not left to this process's later children
    pinger = _Pinger.remote()
    ray.get(pinger.ping.remote(), timeout=120)
    assert _python_workers() == ["ray::_Pinger"]
