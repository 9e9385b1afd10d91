"""Serving benchmark: where a request's time goes, side by side in one run.

For one image and for --batch images (default 64) per request, interleaved (bare, predict, HTTP, floor, bare, ...)
so a busy machine slows all alike:

  bare     the network's forward alone on the prepared images (torch.inference_mode, eval mode)
  predict  the MLflow pyfunc's `predict` in process on a DataFrame of base64 PNGs (schema check, base64 + PIL
           decode, to_model_input, forward, every served score, the response DataFrame)
  floor_predict  the same call to a trivial pyfunc with the same signature (bench/floor_model.py: no work, a
           response frame built once) loaded in process: what MLflow's pyfunc layer costs by itself
  HTTP     POST /invocations to `mlflow models serve --env-manager local` serving the model (keep-alive)
  floor    the same request to that trivial pyfunc served the same way: what MLflow's scoring server costs by
           itself

Each of --runs runs (default 3) gives p50/p99 per arm; the table shows the median over the runs, the ratios
predict / bare and HTTP / floor, "ncood's HTTP extra" = HTTP p50 - floor p50 - predict p50 (what serving adds
beyond MLflow's floor and the in-process work), and in process "ncood's extra" = predict p50 - floor_predict p50
- bare p50 (decoding, preparing, the scores, the response frame) and "(floor + bare) / bare", the ratio a pyfunc
that ran only the forward would have. The images are the model's own input example (an ID validation
image) repeated, or, with --image-size S, random S x S RGB PNGs. Only loopback servers are measured, and the
request counts are capped (--requests <= 5000, --batch-requests <= 1000).

    python bench/serve.py --model-uri models:/ncood-ood-scorer@champion            # starts both servers itself
    python bench/serve.py --demo --json     # trains + logs a tiny digits model in a temp store first (~30 s)
    python bench/serve.py --demo --demo-width 64    # the same at the papers' ResNet18 width
    python bench/serve.py --smoke --json    # a 1-epoch width-4 model, a handful of requests (tests/test_bench.py)

The header gives the machine load (os.getloadavg, before and after) and the versions; `--json` prints one JSON
object as the last line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
import warnings
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import environment, print_json, side_by_side
from ncood.serve import INPUT_COLUMN, Scorer, encode_png
from ncood.serve.decoding import decode_batch
from ncood.serve.package import signature
from ncood.serve.scorer import score_columns
from ncood.serve.server import local_server

FLOOR_MODEL = Path(__file__).with_name("floor_model.py")
ARMS = ("bare", "predict", "floor_predict", "http", "floor")
MAX_REQUESTS, MAX_BATCH_REQUESTS, MAX_BATCH = 5000, 1000, 256
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Client:
    """POST /invocations over one keep-alive connection."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname not in LOOPBACK_HOSTS:
            raise SystemExit(f"bench/serve.py measures loopback servers only, not {parsed.hostname!r}")
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout)

    def post(self, body: bytes) -> bytes:
        self.conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:500]!r}")
        return data


def load_pyfunc(model_uri: str):
    """(pyfunc model, its Scorer, its input example) as the server loads them."""
    import mlflow.artifacts
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]["data"][0][0]
    return model, model.unwrap_python_model().scorer, example


def save_floor_model(path: Path, scorer: Scorer) -> str:
    """The trivial pyfunc with the scorer's signature, saved at `path` (a local model directory, no store)."""
    import mlflow.pyfunc

    scores = tuple(scorer.spec.scores)
    with warnings.catch_warnings():  # "no input example": on purpose, it would load the floor model once more
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(str(path), python_model=str(FLOOR_MODEL), signature=signature(scores),
                                 model_config={"doubles": list(score_columns(scores))},
                                 pip_requirements=[f"mlflow=={version('mlflow')}"])
    return str(path)


def load_floor(path: str):
    """The floor model loaded in process, as MLflow loads any pyfunc."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(path)


def demo_model(root: Path, width: int = 8, epochs: int = 3) -> tuple[str, str]:
    """Train a ResNet18 (`width`, 3 epochs; --smoke: width 4, 1 epoch, enough to exercise every arm) on digits (1
    thread), log it; returns (models:/ URI, tracking URI)."""
    from ncood import tracking
    from ncood.config import make_config
    from ncood.pipeline import build_trial
    from ncood.serve import log_ood_scorer

    uri = tracking.resolve_tracking_uri(str(root / "mlflow.db"))
    ref = tracking.start_sweep(uri, tracking.prepare_experiment("bench-serve", uri), "bench", {}, {})
    cfg = make_config("digits", width=width, epochs=epochs, device="cpu", data_root=str(root / "data"))
    tracker = tracking.TrialTracker(ref, cfg, trial_id="bench")
    run_id = tracker.start()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trial = build_trial(cfg, progress=False)
        trial.trainer.fit()
        info = log_ood_scorer(trial, run_id, uri)
    finally:
        torch.set_num_threads(threads)
    tracker.finish()
    return info.model_uri, uri


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def measure_once(arms: dict, repeats: int) -> dict[str, dict[str, float]]:
    """One run: every arm `repeats` times, interleaved -> {arm: {p50_ms, p99_ms}}."""
    times, _ = side_by_side(arms, torch.device("cpu"), repeats)
    return {k: {"p50_ms": percentile_ms(t["all_s"], 50), "p99_ms": percentile_ms(t["all_s"], 99)}
            for k, t in times.items()}


def measure(clients: dict[str, Client], pyfuncs: dict, scorer: Scorer, images: list[str], repeats: int,
            runs: int) -> dict:
    """`runs` runs of the five arms on one request of `images`; medians over the runs, and every run.
    pyfuncs: the in-process models {"predict": the scorer, "floor_predict": the floor}."""
    body = json.dumps({"dataframe_split": {"columns": [INPUT_COLUMN], "data": [[s] for s in images]}}).encode()
    df = pd.DataFrame({INPUT_COLUMN: images})
    x = scorer.prepare(decode_batch(images, scorer.limits))  # (N, C, H, W) the network's input

    def bare():
        with torch.inference_mode():
            return scorer.model(x)

    arms = {"bare": bare, "predict": lambda: pyfuncs["predict"].predict(df),
            "floor_predict": lambda: pyfuncs["floor_predict"].predict(df),
            "http": lambda: clients["http"].post(body), "floor": lambda: clients["floor"].post(body)}
    for fn in arms.values():  # warm-up: connections, first-call allocations
        for _ in range(3):
            fn()
    every = [measure_once(arms, repeats) for _ in range(runs)]
    med = {arm: {q: statistics.median(r[arm][q] for r in every) for q in ("p50_ms", "p99_ms")} for arm in ARMS}
    n = len(images)
    return {"images_per_request": n, "requests_per_run": repeats, "runs": runs, "request_bytes": len(body),
            **{f"{arm}_{q}": v for arm, d in med.items() for q, v in d.items()},
            "predict_over_bare": med["predict"]["p50_ms"] / med["bare"]["p50_ms"],
            "http_over_floor": med["http"]["p50_ms"] / med["floor"]["p50_ms"],
            "http_extra_ms": med["http"]["p50_ms"] - med["floor"]["p50_ms"] - med["predict"]["p50_ms"],
            "predict_extra_ms": med["predict"]["p50_ms"] - med["floor_predict"]["p50_ms"] - med["bare"]["p50_ms"],
            "floor_plus_bare_over_bare": (med["floor_predict"]["p50_ms"] + med["bare"]["p50_ms"])
            / med["bare"]["p50_ms"],
            "http_images_per_s": n / med["http"]["p50_ms"] * 1e3, "every_run": every}


def versions() -> dict[str, str]:
    return {name: version(name) for name in ("mlflow", "torch", "pandas", "numpy", "pillow", "uvicorn")}


def report(args, result: dict) -> None:
    env, single, batch = result["environment"], result["single"], result["batch"]
    print(f"serving benchmark: {result['model_uri']} at {result['url']}; images: {result['images']}")
    print(f"device {env['device']} ({env['cpu_count']} cores, {env['cpu_threads']} torch thread(s) in process and per "
          f"server worker), git {env['git']}, load average before {result['load_before']} after {result['load_after']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(f"median over {single['runs']} runs of each run's p50 (p99) in ms, interleaved arms")
    print(f"{'':10s} {'bare':>8s} {'predict':>8s} {'floor pr.':>9s} {'HTTP p50':>9s} {'HTTP p99':>9s} "
          f"{'floor p50':>10s} {'floor p99':>10s} {'pred/bare':>10s} {'fl+b/bare':>10s} {'pred extra':>11s} "
          f"{'HTTP/floor':>11s} {'HTTP extra':>11s} {'HTTP img/s':>11s}")
    for name, r in (("1 image", single), (f"{args.batch} images", batch)):
        print(f"{name:10s} {r['bare_p50_ms']:8.2f} {r['predict_p50_ms']:8.2f} {r['floor_predict_p50_ms']:9.2f} "
              f"{r['http_p50_ms']:9.2f} {r['http_p99_ms']:9.2f} {r['floor_p50_ms']:10.2f} {r['floor_p99_ms']:10.2f} "
              f"{r['predict_over_bare']:9.2f}x {r['floor_plus_bare_over_bare']:9.2f}x {r['predict_extra_ms']:9.2f}ms "
              f"{r['http_over_floor']:10.2f}x {r['http_extra_ms']:9.2f}ms {r['http_images_per_s']:11.0f}")
    print(f"pred extra = predict p50 - floor predict p50 - bare p50 (ncood's in-process work around the forward); "
          f"fl+b/bare = (floor predict + bare) / bare, what a pyfunc running only the forward would reach; HTTP "
          f"extra = HTTP p50 - floor p50 - predict p50. Targets for 1 image: predict <= 1.5x bare "
          f"({single['predict_over_bare']:.2f}x), HTTP extra <= 2 ms ({single['http_extra_ms']:.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-uri", help="model to score in process and to serve")
    p.add_argument("--tracking-uri", default=None, help="store for models:/ URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--demo", action="store_true", help="train and log a tiny digits model in a temp store first")
    p.add_argument("--demo-width", type=int, default=8,
                   help="ResNet18 width of the --demo model (default 8; the papers' ResNet18 is 64: a forward that "
                        "outweighs the fixed per-request work); --smoke keeps its width 4")
    p.add_argument("--smoke", action="store_true",
                   help="--demo with a width-4, 1-epoch model, 3 runs of 5 single and 2 batch requests of 16")
    p.add_argument("--runs", type=int, default=3, help="runs; the table shows the median over them (>= 3)")
    p.add_argument("--requests", type=int, default=200, help=f"single-image requests per run (<= {MAX_REQUESTS})")
    p.add_argument("--batch", type=int, default=64, help=f"images per batch request (<= {MAX_BATCH})")
    p.add_argument("--batch-requests", type=int, default=30, help=f"batch requests per run (<= {MAX_BATCH_REQUESTS})")
    p.add_argument("--image-size", type=int, default=None, help="send random S x S RGB PNGs instead of the example")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in process and per server worker (OMP_NUM_THREADS); default 1: client and "
                        "servers share the cores, and OpenMP spin-waits stall when they are oversubscribed")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.smoke:
        args.demo, args.requests, args.batch_requests, args.batch = True, 5, 2, 16
    if not (1 <= args.requests <= MAX_REQUESTS and 1 <= args.batch_requests <= MAX_BATCH_REQUESTS
            and 1 <= args.batch <= MAX_BATCH and args.runs >= 1):
        p.error(f"bounded runs only: --requests <= {MAX_REQUESTS}, --batch-requests <= {MAX_BATCH_REQUESTS}, "
                f"--batch <= {MAX_BATCH}, --runs >= 1")
    if not (args.model_uri or args.demo):
        p.error("pass --model-uri (or --demo): in-process scoring needs the model")

    load_before = [round(v, 2) for v in os.getloadavg()]
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ncood-bench-serve-")))
        tracking_uri = args.tracking_uri
        if args.demo:
            t0 = time.perf_counter()
            args.model_uri, tracking_uri = demo_model(root, *((4, 1) if args.smoke else (args.demo_width, 3)))
            print(f"demo model logged in {time.perf_counter() - t0:.1f} s: {args.model_uri}", file=sys.stderr)
        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # models:/ URIs, here and in the server
        torch.set_num_threads(args.threads)
        pyfunc, scorer, example = load_pyfunc(args.model_uri)
        if args.image_size:
            rng = np.random.default_rng(0)
            pool = [encode_png(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
                    for _ in range(args.batch)]
            what = f"random {args.image_size}x{args.image_size} RGB PNGs"
        else:
            pool = [example] * args.batch
            what = "the model's input example (an ID validation image)"
        env = {"OMP_NUM_THREADS": str(args.threads)}
        floor_uri = save_floor_model(root / "floor", scorer)
        t0 = time.perf_counter()
        urls = {"http": stack.enter_context(local_server(args.model_uri, tracking_uri=tracking_uri,
                                                         workers=args.workers, extra_env=env)),
                "floor": stack.enter_context(local_server(floor_uri, workers=args.workers, extra_env=env))}
        startup_s = time.perf_counter() - t0
        clients = {k: Client(u) for k, u in urls.items()}
        pyfuncs = {"predict": pyfunc, "floor_predict": load_floor(floor_uri)}
        single = measure(clients, pyfuncs, scorer, pool[:1], args.requests, args.runs)
        batch = measure(clients, pyfuncs, scorer, pool, args.batch_requests, args.runs)

    result = {"bench": "serve", "model_uri": args.model_uri, "url": urls["http"], "floor_url": urls["floor"],
              "servers_startup_s": startup_s, "workers": args.workers, "threads": args.threads, "images": what,
              "single": single, "batch": batch, "load_before": load_before,
              "load_after": [round(v, 2) for v in os.getloadavg()], "versions": versions(),
              "environment": environment(torch.device("cpu"))}
    report(args, result)
    if args.json:
        print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
