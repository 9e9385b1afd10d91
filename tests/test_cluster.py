"""The sqlite-on-a-cluster guard rail on real Ray clusters: a two-node cluster on this machine (Ray's own
ray.cluster_utils.Cluster: a head and a second raylet with their own resources) warns, a one-node one does not."""
from __future__ import annotations

import os
import warnings

import pytest
import ray
from ray.cluster_utils import Cluster

from ncood.tune.cluster import (SqliteOnClusterWarning, alive_nodes, sqlite_on_cluster_message,
                                warn_if_sqlite_on_cluster)

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
