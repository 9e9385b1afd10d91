"""Serving benchmark: `mlflow models serve` (HTTP + JSON + base64) next to in-process scoring of the same images.

Measured, interleaved (in-process call, HTTP request, in-process, HTTP, ...) so a busy machine slows both alike:

  single   one image per request: p50 / p99 latency of the HTTP round trip (persistent keep-alive connection) and
           of `Scorer.score_base64` in process (base64 decode + PIL + to_model_input + forward + scores)
  batch    --batch images (default 64) per request: p50 / p99 latency and images/s, the same for in process
  overhead HTTP p50 / in-process p50 for each: what the server adds (JSON, pandas, schema check, uvicorn)

The images are the model's own input example (an ID validation image) repeated, or, with --image-size S, random
S x S RGB PNGs (upload-sized inputs that the server resizes). Only loopback servers are measured, and the request
counts are capped (--requests <= 5000, --batch-requests <= 1000).

    python bench/serve.py --model-uri models:/ncood-ood-scorer@champion            # starts a server itself
    python bench/serve.py --url http://127.0.0.1:5001 --model-uri models:/ncood-ood-scorer@champion
    python bench/serve.py --demo --json     # trains + logs a tiny digits model in a temp store first (~30 s)
    python bench/serve.py --smoke --json    # the same with a handful of requests

`--json` prints one JSON object as the last line (device, torch, threads, git SHA included: STYLE.md 5).
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
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from _common import environment, print_json, side_by_side
from ncood.serve import INPUT_COLUMN, Scorer, encode_png
from ncood.serve.server import local_server

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


def load_scorer(model_uri: str) -> tuple[Scorer, str]:
    """The in-process scorer of `model_uri` (through pyfunc, as the server loads it) and its input example."""
    import mlflow.artifacts
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]["data"][0][0]
    return model.unwrap_python_model().scorer, example


def demo_model(root: Path) -> tuple[str, str]:
    """Train a width-8 ResNet18 on digits for 3 epochs (1 thread), log it; returns (models:/ URI, tracking URI)."""
    from ncood import tracking
    from ncood.config import make_config
    from ncood.pipeline import build_trial
    from ncood.serve import log_ood_scorer

    uri = tracking.resolve_tracking_uri(str(root / "mlflow.db"))
    ref = tracking.start_sweep(uri, tracking.prepare_experiment("bench-serve", uri), "bench", {}, {})
    cfg = make_config("digits", width=8, epochs=3, device="cpu", data_root=str(root / "data"))
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


def measure(client: Client, scorer: Scorer, images: list[str], repeats: int) -> dict[str, float]:
    body = json.dumps({"dataframe_split": {"columns": [INPUT_COLUMN], "data": [[s] for s in images]}}).encode()
    for _ in range(3):  # warm-up: connection, first-call allocations on both sides
        client.post(body)
        scorer.score_base64(images)
    times, _ = side_by_side({"in_process": lambda: scorer.score_base64(images), "http": lambda: client.post(body)},
                            torch.device("cpu"), repeats)
    n = len(images)
    out = {"images_per_request": n, "requests": repeats, "request_bytes": len(body)}
    for name, t in times.items():
        out[f"{name}_p50_ms"] = percentile_ms(t["all_s"], 50)
        out[f"{name}_p99_ms"] = percentile_ms(t["all_s"], 99)
        out[f"{name}_images_per_s"] = n / statistics.median(t["all_s"])
    out["overhead"] = out["http_p50_ms"] / out["in_process_p50_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-uri", help="model to score in process (and to serve unless --url is given)")
    p.add_argument("--url", help="a running server on this machine (loopback), e.g. http://127.0.0.1:5001")
    p.add_argument("--tracking-uri", default=None, help="store for models:/ URIs (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--demo", action="store_true", help="train and log a tiny digits model in a temp store first")
    p.add_argument("--smoke", action="store_true", help="--demo with 20 single and 5 batch requests of 16 (tests)")
    p.add_argument("--requests", type=int, default=200, help=f"single-image requests (<= {MAX_REQUESTS})")
    p.add_argument("--batch", type=int, default=64, help=f"images per batch request (<= {MAX_BATCH})")
    p.add_argument("--batch-requests", type=int, default=30, help=f"batch requests (<= {MAX_BATCH_REQUESTS})")
    p.add_argument("--image-size", type=int, default=None, help="send random S x S RGB PNGs instead of the example")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of a server started here")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in process and per server worker started here (OMP_NUM_THREADS); default 1: "
                        "client and server share the cores, and OpenMP spin-waits stall when they are oversubscribed")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.smoke:
        args.demo, args.requests, args.batch_requests, args.batch = True, 20, 5, 16
    if not (1 <= args.requests <= MAX_REQUESTS and 1 <= args.batch_requests <= MAX_BATCH_REQUESTS
            and 1 <= args.batch <= MAX_BATCH):
        p.error(f"bounded runs only: --requests <= {MAX_REQUESTS}, --batch-requests <= {MAX_BATCH_REQUESTS}, "
                f"--batch <= {MAX_BATCH}")
    if not (args.model_uri or args.demo):
        p.error("pass --model-uri (or --demo): in-process scoring needs the model")

    with ExitStack() as stack:
        tracking_uri = args.tracking_uri
        if args.demo:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ncood-bench-serve-")))
            t0 = time.perf_counter()
            args.model_uri, tracking_uri = demo_model(root)
            print(f"demo model logged in {time.perf_counter() - t0:.1f} s: {args.model_uri}", file=sys.stderr)
        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # models:/ URIs, here and in the server
        torch.set_num_threads(args.threads)
        scorer, example = load_scorer(args.model_uri)
        if args.image_size:
            rng = np.random.default_rng(0)
            pool = [encode_png(rng.integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8))
                    for _ in range(args.batch)]
            what = f"random {args.image_size}x{args.image_size} RGB PNGs"
        else:
            pool = [example] * args.batch
            what = "the model's input example (an ID validation image)"
        started = args.url is None
        url = args.url
        if started:
            t0 = time.perf_counter()
            url = stack.enter_context(local_server(args.model_uri, tracking_uri=tracking_uri, workers=args.workers,
                                                   extra_env={"OMP_NUM_THREADS": str(args.threads)}))
            startup_s = time.perf_counter() - t0
        client = Client(url)
        single = measure(client, scorer, pool[:1], args.requests)
        batch = measure(client, scorer, pool, args.batch_requests)

    env = environment(torch.device("cpu"))
    result = {"bench": "serve", "model_uri": args.model_uri, "url": url, "server_started_here": started,
              "server_startup_s": startup_s if started else None, "workers": args.workers if started else None,
              "server_threads": args.threads if started else None,
              "images": what, "single": single, "batch": batch, "environment": env}
    print(f"serving benchmark: {args.model_uri} at {url} ({'started here' if started else 'running server'}); "
          f"images: {what}")
    print(f"device {env['device']} ({env['cpu_count']} cores, torch {env['torch']}, {env['cpu_threads']} threads "
          f"in process), git {env['git']}"
          + (f"; server: {args.workers} worker(s) x {args.threads} thread(s), start-up {startup_s:.1f} s" if started else ""))
    print(f"{'':10s} {'HTTP p50':>10s} {'HTTP p99':>10s} {'in-proc p50':>12s} {'in-proc p99':>12s} "
          f"{'HTTP img/s':>11s} {'in-proc img/s':>14s} {'overhead':>9s}")
    for name, r in (("1 image", single), (f"{args.batch} images", batch)):
        print(f"{name:10s} {r['http_p50_ms']:8.2f}ms {r['http_p99_ms']:8.2f}ms {r['in_process_p50_ms']:10.2f}ms "
              f"{r['in_process_p99_ms']:10.2f}ms {r['http_images_per_s']:11.0f} {r['in_process_images_per_s']:14.0f} "
              f"{r['overhead']:8.2f}x")
    print(f"({single['requests']} single and {batch['requests']} batch requests, interleaved with the in-process "
          f"calls; overhead = HTTP p50 / in-process p50)")
    if args.json:
        print_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
