"""The screenshots of docs/mlflow-ui.md: the real `mlflow ui` on a sweep's store, pages opened in headless Chromium.

    python docs/make_screenshots.py --tracking-uri sqlite:////abs/mlruns/mlflow.db --experiment ablation-default

Writes docs/img/ui-*.png. Chromium: Debian's `chromium` package (tests/browser.py has the flags and the server).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow.tracking import MlflowClient  # noqa: E402

from ncood import tracking  # noqa: E402
from ncood.aggregate.summary import headline_url  # noqa: E402
from tests.browser import chromium, mlflow_ui, screenshot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", default="ablation-default")
    p.add_argument("--out", default=str(REPO / "docs" / "img"))
    args = p.parse_args(argv)
    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(args.experiment)
    sweep = client.search_runs([exp.experiment_id], f"tags.`{tracking.TAG_ROLE}` = 'sweep'", max_results=1,
                               order_by=["attributes.start_time DESC"])[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    binary = chromium(install=False)
    eid, rid = exp.experiment_id, sweep.info.run_id
    with mlflow_ui(uri) as url:
        pages = {
            "ui-1-headline-view.png": (headline_url(url, eid), (2400, 700)),
            "ui-2-sweep-run-overview.png": (f"{url}/#/experiments/{eid}/runs/{rid}", (1600, 1300)),
            "ui-3-default-runs-page.png": (f"{url}/#/experiments/{eid}/runs", (1600, 600)),
        }
        for name, (page, size) in pages.items():
            print(screenshot(binary, page, out / name, size=size, budget_ms=25000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
