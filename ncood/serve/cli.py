"""The flags of `ncood register` and `ncood serve`, and their defaults, without importing torch or MLflow (`--help`
must answer in under a second); `run_register` imports ncood.serve.register (MLflow) when it runs.
"""
from __future__ import annotations

import argparse
import sys

from ncood.keys import DEFAULT_EXPERIMENT

MODEL_NAME = "ncood-ood-scorer"  # the registered model `ncood register` writes and `ncood serve` reads
DEFAULT_ALIAS = "champion"
DEFAULT_PORT = 5001
DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{DEFAULT_ALIAS}"
TRACKING_HELP = "MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns/mlflow.db)"


def add_register_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment of the sweep (default: {DEFAULT_EXPERIMENT}, the ablation job's)")
    parser.add_argument("--metric", default=None,
                        help="metric key to rank conditions by (default: auroc/gmm/<first OoD set>)")
    parser.add_argument("--mode", choices=("max", "min"), default=None,
                        help="max or min is better (default: min for fpr95, loss/*, nc/*, time/*; else max)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to set (default: {DEFAULT_ALIAS})")
    parser.add_argument("--model-name", default=MODEL_NAME, help=f"registered model name (default: {MODEL_NAME})")
    parser.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port shown in the printed serve command")


def run_register(args: argparse.Namespace) -> int:
    from ncood import tracking
    from ncood.serve.register import RegisterError, format_registration, register_best

    try:
        reg = register_best(args.experiment, metric=args.metric, alias=args.alias, tracking_uri=args.tracking_uri,
                            model_name=args.model_name, mode=args.mode)
    except (RegisterError, tracking.TrackingError) as e:
        print(f"ncood register: {e}", file=sys.stderr)
        return 2
    print(format_registration(reg, args.port))
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-uri", default=DEFAULT_MODEL_URI,
                        help=f"model to serve (default: {DEFAULT_MODEL_URI}, what `ncood register` and the end of "
                             f"tune_jobs/ablation.py set)")
    parser.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")


def run_serve(args: argparse.Namespace) -> int:
    """Replace this process with `mlflow models serve --env-manager local` (ncood.serve.server.serve_env: this
    venv's bin on PATH, MLFLOW_TRACKING_URI, ncood's request limits), so it works from .venv/bin/ncood unactivated.
    First the store, the model and the port are checked (ncood.serve.preflight): a problem there is one line and
    exit status 2, with nothing created and no address printed."""
    import os

    from ncood.serve.preflight import ServeError, check_model, check_port
    from ncood.serve.server import serve_args, serve_env
    from ncood.tracking import TrackingError, resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        check_model(args.model_uri, uri)
        check_port(args.host, args.port)  # last: the shortest time between this check and uvicorn's own bind
    except (ServeError, TrackingError) as e:
        print(f"ncood serve: {e}", file=sys.stderr)
        return 2
    argv = serve_args(args.model_uri, args.port, args.workers, args.host)
    print(f"ncood serve: {args.model_uri} from {uri} on http://{args.host}:{args.port} "
          f"(try: curl -s http://{args.host}:{args.port}/ping)", flush=True)
    sys.stdout.flush()
    os.execve(argv[0], argv, serve_env(uri))
    return 0  # not reached: execve replaced the process
