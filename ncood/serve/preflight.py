"""Checks `ncood serve` makes before it starts `mlflow models serve`, so that a wrong store, model or port gets one
line saying what is wrong and what to do, and nothing is created.

Why: `mlflow models serve` resolves a `models:/` URI through MLflow's store, and opening a sqlite URI creates the
database, its parent directories and the full schema (mlflow/store/db/utils.py: `_make_parent_dirs_if_sqlite`,
`_initialize_tables`, "Creating initial MLflow database tables...") before it finds that nothing is registered
there; a model or alias that does not exist ends in a 50-line traceback. A port another server holds fails only
after the model has loaded (uvicorn's bind, uvicorn/config.py `bind_socket`: `[Errno 98] address already in use`),
after `ncood serve` has printed an address whose /ping reaches the other server.
"""
from __future__ import annotations

import errno
import socket

from ncood import tracking
from ncood.serve.cli import DEFAULT_ALIAS, MODEL_NAME


class ServeError(RuntimeError):
    """`ncood serve` cannot start as asked; the message says why and what to do."""


def check_store(model_uri: str, tracking_uri: str) -> None:
    """A sqlite store must exist before MLflow opens it: opening creates it (and its folders), empty
    (ncood.tracking.existing_store, as `ncood register` and `ncood aggregate` check it)."""
    if not model_uri.startswith(("models:/", "runs:/")):
        return  # a model that does not go through the store (a local path)
    try:
        tracking.existing_store(tracking_uri)
    except tracking.TrackingError as e:
        raise ServeError(f"{e}, so no {model_uri} to serve; or register a model there first: "
                         f"ncood register --experiment <sweep experiment> --tracking-uri {tracking_uri}") from None


def _parse_models_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """models:/<name>@<alias>, models:/<name>/<version|stage|latest> or models:/<logged model id>
    -> (name or model id, alias, suffix), the forms of mlflow/store/artifact/utils/models.py `_parse_model_uri`."""
    path = model_uri[len("models:/"):]
    parts = path.split("/")
    if len(parts) == 2 and all(p.strip() for p in parts):
        return parts[0], None, parts[1]
    if len(parts) == 1 and "@" in path:
        name, alias = path.rsplit("@", 1)
        if name.strip() and alias.strip():
            return name, alias, None
    if len(parts) == 1 and path.strip():
        return path, None, None
    raise ServeError(f"--model-uri {model_uri!r} is not a valid models:/ URI; use models:/<name>@<alias> (e.g. "
                     f"models:/{MODEL_NAME}@champion), models:/<name>/<version> or models:/<logged model id>")


def _register_hint(name: str, alias: str | None, tracking_uri: str) -> str:
    """The `ncood register` command that would make `name`@`alias` (flags at their defaults left out)."""
    flags = (f" --model-name {name}" if name != MODEL_NAME else "") + \
        (f" --alias {alias}" if alias not in (None, DEFAULT_ALIAS) else "")
    return (f"run `ncood register --experiment <sweep experiment>{flags} --tracking-uri {tracking_uri}` first, or "
            f"pass --model-uri (and --tracking-uri) of a model that exists")


def check_model(model_uri: str, tracking_uri: str) -> None:
    """The registered model, version or alias (or logged model, or run) of `model_uri` exists in the store; a
    ServeError naming what is missing where, and what to do, otherwise. Other URIs (local paths) pass unchecked."""
    check_store(model_uri, tracking_uri)
    if not model_uri.startswith(("models:/", "runs:/")):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError  # MLflow's sqlite store: e.g. a file that is not a database

    try:
        client = MlflowClient(tracking_uri)
        if model_uri.startswith("runs:/"):
            _check_run(client, model_uri, tracking_uri)
        else:
            _check_registered(client, model_uri, tracking_uri)
    except (MlflowException, SQLAlchemyError) as e:  # the store itself failed (unreachable server, not a database)
        reason = e.message if isinstance(e, MlflowException) else str(getattr(e, "orig", None) or e)
        raise ServeError(f"cannot look {model_uri} up in {tracking_uri}: {reason}; check --tracking-uri") from None


def _missing(e: Exception) -> bool:
    return getattr(e, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _require(lookup, missing: str) -> None:
    """lookup() (an MLflow get); ServeError(missing) when MLflow says that thing does not exist (other errors of
    the store propagate to check_model)."""
    from mlflow.exceptions import MlflowException

    try:
        lookup()
    except MlflowException as e:
        if not _missing(e):
            raise
        raise ServeError(missing) from None


def _check_run(client, model_uri: str, tracking_uri: str) -> None:
    run_id = model_uri[len("runs:/"):].split("/")[0]
    _require(lambda: client.get_run(run_id), f"no run {run_id!r} in {tracking_uri} ({model_uri}); pass --tracking-uri "
             f"of the store that holds it, or serve a registered model: --model-uri models:/{MODEL_NAME}@champion")


def _check_registered(client, model_uri: str, tracking_uri: str) -> None:
    from mlflow.exceptions import MlflowException

    name, alias, suffix = _parse_models_uri(model_uri)
    if alias is None and suffix is None:  # models:/<logged model id>
        _require(lambda: client.get_logged_model(name), f"no logged model {name!r} in {tracking_uri} ({model_uri}); "
                 f"pass --tracking-uri of the store that holds it, or --model-uri models:/{MODEL_NAME}@champion")
        return
    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if not _missing(e):
            raise
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
        there = f"registered models there: {', '.join(names)}" if names else "nothing is registered there"
        raise ServeError(f"no registered model {name!r} in {tracking_uri} ({there}); "
                         f"{_register_hint(name, alias, tracking_uri)}") from None
    if alias is not None and alias not in model.aliases:
        have = ", ".join(f"@{a}" for a in sorted(model.aliases)) or "none"
        raise ServeError(f"registered model {name!r} in {tracking_uri} has no alias @{alias} (its aliases: {have}); "
                         f"{_register_hint(name, alias, tracking_uri)}")
    if suffix is not None and suffix.isdigit():
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if int(suffix) not in versions:
            raise ServeError(f"registered model {name!r} in {tracking_uri} has no version {suffix} (its versions: "
                             f"{', '.join(map(str, versions)) or 'none'}); pass one of those, or "
                             f"--model-uri models:/{name}@champion")


def check_port(host: str, port: int) -> None:
    """`host:port` can be listened on now: bound as uvicorn binds it (uvicorn/config.py `bind_socket`: IPv6 when
    the host has a ':', SO_REUSEADDR, so a port left in TIME_WAIT by a stopped server counts as free), then released.
    A server that takes the port between this check and uvicorn's bind still fails there."""
    if not 1 <= port <= 65535:
        raise ServeError(f"--port {port} is not a TCP port; pass one from 1 to 65535 (default 5001)")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use (another server is listening there: "
                                 f"http://{host}:{port}/ping would reach it, not this model); pick another with "
                                 f"--port, or stop that server") from None
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host and --port") from None
