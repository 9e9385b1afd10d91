"""The headline in a real browser: a tiny ablation grid (real Ray, real MLflow, the aggregation at its end), `mlflow ui`
on its store, and the experiment's runs page in headless Chromium. The headline view (the link the description starts
with, and the URL the job prints) shows the sweep run's summary metrics and L2 effects as columns of its row, values
included, without expanding anything; the default view shows the sweep row and the description.

Chromium is Debian's `chromium` package: installed with apt-get when missing (root), else the test is skipped.
"""
from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient

from ncood import keys
from ncood.aggregate import after_sweep
from ncood.aggregate.summary import headline_url
from ncood.tune import SweepSettings, init_ray, run_grid
from tests.browser import chromium, dump_dom, mlflow_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TINY = {"width": 2, "epochs": [2], "ood_sets": ("noise",)}  # 2 seeds x L2 off/on


@pytest.fixture(scope="module")
def browser(apt_lock):
    with apt_lock():  # another xdist worker may be apt-installing too
        binary = chromium()
    if binary is None:
        pytest.skip("chromium is not installed and installing it needs root and apt-get")
    return binary


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory, new_store):
    root = tmp_path_factory.mktemp("browser")
    uri = new_store(root)
    init_ray(num_cpus=2)
    settings = SweepSettings(experiment="ui-test", tracking_uri=uri, storage_path=str(root / "ray"), progress=False,
                             max_concurrent=1)  # one reused worker: tests/test_ablation.py::_settings says why
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
        default = dump_dom(browser, f"{url}/#/experiments/{result.ref.experiment_id}/runs")
        dom = dump_dom(browser, headline_url(url, result.ref.experiment_id), size=(12000, 900))  # every column
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", default))
    assert sweep.info.run_name[:20] in text and "Headline view" in text  # the sweep row, the description's link
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    for key in shown:  # the sweep row's summary columns, by their key (the UI's column id)
        assert f'col-id="metrics.`{key}`"' in dom, key
    for key in shown:  # and their values, as the table prints them (full precision, or rounded)
        value = sweep.data.metrics[key]
        assert any(s in text for s in (repr(value), f"{value:g}", f"{value:.4f}", f"{value:.3f}")), (key, value)
