"""The headline in a real browser: a tiny ablation grid (real Ray, real MLflow, the aggregation at its end), `mlflow ui`
on its store, and the experiment's runs page in headless Chromium: the sweep run's summary metrics and the L2 effect
are in the page without expanding anything, and the experiment description says how to read them.

Chromium is Debian's `chromium` package: installed with apt-get when missing (root), else the test is skipped.
"""
from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from ncood import keys, tracking
from ncood.aggregate import after_sweep
from ncood.tune import SweepSettings, init_ray, run_grid
from tests.browser import chromium, dump_dom, mlflow_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TINY = {"width": 2, "epochs": [2], "ood_sets": ("noise",)}  # 2 seeds x L2 off/on


@pytest.fixture(scope="module")
def browser():
    binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed and installing it needs root and apt-get")
    return binary


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    uri = tracking.resolve_tracking_uri(str(root / "mlflow.db"))
    init_ray(num_cpus=2)
    settings = SweepSettings(experiment="ui-test", tracking_uri=uri, storage_path=str(root / "ray"), progress=False)
    result = run_grid("default", TINY, seeds=2, settings=settings)
    agg = after_sweep(uri, result.ref.experiment_id, result.ref.parent_run_id, out=str(root / "agg"))
    assert agg is not None and agg.run_id
    return uri, result, agg


@pytest.mark.timeout(900)
def test_runs_page_shows_the_sweep_headline(browser, grid_store):
    uri, result, agg = grid_store
    client = MlflowClient(uri)
    sweep = client.get_run(result.ref.parent_run_id)
    l2 = next(c for c in agg.data.conditions if "-l2-" in c)
    base = keys.ood_key("noise", "gmm", "auroc")
    shown = [keys.summary_key(c, "mean", base) for c in agg.data.conditions] + [keys.l2_effect_key(l2, "diff", base)]
    assert all(k in sweep.data.metrics for k in shown)  # logged on the sweep run itself
    with mlflow_ui(uri) as url:
        dom = dump_dom(browser, f"{url}/#/experiments/{result.ref.experiment_id}/runs")
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    assert sweep.info.run_name in text  # the sweep row
    for key in shown:  # its summary metric columns, by their key
        assert key in dom, key
    value = sweep.data.metrics[keys.summary_key(l2, "mean", base)]
    assert any(f"{value:.{d}f}" in text or f"{value:.{d}g}" in text for d in (2, 3, 4)), value  # and a value
    assert "How to read it" in text  # the experiment description (mlflow.note.content)
