"""Request limits in front of MLflow's scoring server: bad input gets a 4xx before MLflow's parser sees it, and
MLflow's own error answers come back without a copy of the request.

Why this exists: MLflow 3.17's scoring server (`mlflow models serve`: FastAPI under uvicorn, the app built by
`mlflow.pyfunc.scoring_server.init`) reads the whole body and calls `json.loads` on it; a deeply nested body
(`[[[[...`, 5,000 levels, 10 kB) makes `json.loads` raise RecursionError, which MLflow does not catch: HTTP 500. A
missing Content-Type header is another 500 (MLflow splits `None`). Neither MLflow nor uvicorn has a body-size or
nesting setting, and MLflow offers no hook to add middleware to that app. uvicorn does have a documented way to be
configured from the environment (every option as a `UVICORN_*` variable) and its `--http` option takes the import
string of the HTTP protocol class. So:

    UVICORN_HTTP=ncood.serve.guard:GuardedHTTPProtocol mlflow models serve -m models:/... --env-manager local

runs uvicorn's own HTTP protocol (h11, or httptools when installed) with MLflow's app wrapped in `RequestGuard`, an
ASGI middleware. It checks every request with a body before passing it on unchanged:

- more than `max_body_bytes` (Content-Length or bytes received) -> 413
- no Content-Type -> 415
- a JSON body nested deeper than `max_json_depth` -> 400. The depth is counted on the raw bytes (strings removed,
  then the running count of `[{` minus `]}`): no recursion, so no depth can crash it. An ncood request is 4 levels
  deep ({"dataframe_split": {"data": [["..."]]}}); the default allows 32.

MLflow's error responses are shortened on their way back (`short_error`). The scoring server prefixes every
MlflowException that `predict` raises with a repr of the whole parsed input (`Failed to predict data '<repr>'.
Error: <reason>`, mlflow/pyfunc/scoring_server/__init__.py:361); for the `inputs` and `instances` forms that is a
numpy repr holding every base64 string in full (a 5.9 MB PNG over the byte cap gave a 7.8 MB HTTP 400), while pandas
cuts a DataFrame's repr (`dataframe_split`: 351 bytes). The guard keeps only <reason> (ncood's message, unchanged and
the same in every request form), replaces the data echo of a schema-enforcement failure (`Failed to enforce schema
of data '<repr>' with schema ...`, mlflow/pyfunc/__init__.py:739) by "the request", and cuts any string still over
MAX_ERROR_CHARS in the middle. The status and the other headers pass unchanged; successful responses are not
touched. (MLflow still builds the repr in memory before the guard sees it: it has no setting to skip it.)

Errors use MLflow's JSON error shape ({"error_code": ..., "message": ...}). Limits come from the environment
variable NCOOD_REQUEST_LIMITS, e.g. NCOOD_REQUEST_LIMITS='{"max_body_bytes": 268435456}' (read once at start-up;
an invalid value stops the server with the reason). `ncood.serve.server.local_server` and the command `ncood
register` prints set UVICORN_HTTP. Nothing of MLflow is patched: the app object it builds is only wrapped.

Which copy of this module runs: with one worker (`-w 1`, the default) uvicorn imports the app before the protocol
class (uvicorn/main.py `config.load_app()`), and loading the model puts its code/ folder (the ncood it was logged
with, ncood.serve.package) first on sys.path, so the guard of the *served model's* ncood runs, not this checkout's;
a change here reaches models logged after it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
from uvicorn.protocols.http.auto import AutoHTTPProtocol

REQUEST_LIMITS_ENV = "NCOOD_REQUEST_LIMITS"
PROTOCOL = "ncood.serve.guard:GuardedHTTPProtocol"  # the value of UVICORN_HTTP

# A JSON string: quote, then runs of ordinary characters separated by escapes (the unrolled form keeps `re` in its
# fast loop on multi-megabyte base64 strings), then the closing quote.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_CHUNK = 1 << 20  # bytes per numpy pass: bounds the int32 temporaries to 4 MiB


@dataclass(frozen=True)
class RequestLimits:
    """Caps on one HTTP request, checked before MLflow parses it."""

    max_body_bytes: int = 64 * 2**20  # 64 MiB: ~48 MiB of images in base64; raise it for big batches
    max_json_depth: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"request limit {f.name} must be an int >= 1, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        raw = (os.environ if environ is None else environ).get(REQUEST_LIMITS_ENV, "").strip()
        if not raw:
            return cls()
        example = f"{REQUEST_LIMITS_ENV}='{{\"max_body_bytes\": 268435456, \"max_json_depth\": 32}}'"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{REQUEST_LIMITS_ENV} is not valid JSON ({e}); example: {example}") from e
        known = {f.name for f in fields(cls)}
        if not isinstance(value, dict) or set(value) - known:
            raise ValueError(f"{REQUEST_LIMITS_ENV} must be a JSON object with keys from {sorted(known)}; "
                             f"example: {example}")
        return cls(**value)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def json_depth(body: bytes) -> int:
    """Deepest nesting of `[`/`{` in a JSON text (0 for a scalar), without parsing it.

    Strings are removed first (brackets inside them do not count), then depth = max over positions of the running
    count (#`[{` - #`]}`), computed with numpy a chunk at a time. Invalid JSON gets some number; MLflow rejects it."""
    stripped = _STRING.sub(b'""', body)
    carry, deepest = 0, 0
    for start in range(0, len(stripped), _CHUNK):
        a = np.frombuffer(stripped, np.uint8, count=min(_CHUNK, len(stripped) - start), offset=start)
        steps = np.isin(a, _OPEN).astype(np.int32) - np.isin(a, _CLOSE).astype(np.int32)
        running = np.cumsum(steps, dtype=np.int64) + carry
        deepest = max(deepest, int(running.max()))
        carry = int(running[-1])
    return deepest


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def _reject(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# MLflow 3.17's wrappers around a failed predict's message (the module docstring has where they come from).
_PREDICT_ECHO = ("Failed to predict data '", "'. \nError: ")  # prefix ... separator; the reason follows
_SCHEMA_ECHO = ("Failed to enforce schema of data '", "' with schema '")
MAX_ERROR_CHARS = 4000  # ncood's longest reason (10 rows named, each in a sentence) is well under this


def short_error(message: str) -> str:
    """An MLflow error message without its copy of the request's data (see the module docstring)."""
    start, sep = _PREDICT_ECHO
    if message.startswith(start) and sep in message:
        # the last separator: the reason (ncood's message or MLflow's schema message) holds none
        message = message[message.rindex(sep) + len(sep):]
    start, sep = _SCHEMA_ECHO
    if message.startswith(start) and sep in message:
        message = "Failed to enforce schema of the request" + message[message.rindex(sep) + 1:]
    if len(message) > MAX_ERROR_CHARS:  # a reason that still echoes input: keep its start and its end
        half = MAX_ERROR_CHARS // 2
        message = f"{message[:half]} ... [{len(message) - 2 * half} characters cut] ... {message[-half:]}"
    return message


def short_error_body(body: bytes) -> bytes:
    """A JSON error body with every string value through short_error; any other body unchanged."""
    try:
        error = json.loads(body)
    except ValueError:  # not JSON (e.g. MLflow's plain-text 504): nothing of the request in it
        return body
    if not isinstance(error, dict):
        return body
    return json.dumps({k: short_error(v) if isinstance(v, str) else v for k, v in error.items()}).encode()


def _short_errors(send: Send) -> Send:
    """A send callable that passes responses under 400 through as they come and holds an error response until its
    body is complete, then sends it through short_error_body with a Content-Length to match."""
    held: list[dict] = []  # the error's http.response.start
    body = bytearray()

    async def send_short(message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held.append(message)
            return
        if not held or message["type"] != "http.response.body":
            return await send(message)
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        start = held.pop()
        headers = [(k, v) for k, v in start.get("headers") or [] if k.lower() != b"content-length"]
        is_json = any(k.lower() == b"content-type" and v.lower().startswith(b"application/json") for k, v in headers)
        short = short_error_body(bytes(body)) if is_json else bytes(body)
        await send({**start, "headers": [*headers, (b"content-length", str(len(short)).encode())]})
        await send({"type": "http.response.body", "body": short})

    return send_short


class RequestGuard:
    """ASGI middleware: buffers a request's body within `limits`, checks it, then hands the same bytes to `app`;
    error responses come back through short_error_body."""

    def __init__(self, app: Callable, limits: RequestLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        cap = self.limits.max_body_bytes
        headers = dict(scope.get("headers") or [])  # ASGI: lower-case byte names
        too_big = (f"request body over the cap of {cap} bytes; send fewer or smaller images per request "
                   f"(the server's cap: {REQUEST_LIMITS_ENV}='{{\"max_body_bytes\": N}}')")
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > cap:
            return await _reject(send, 413, "REQUEST_LIMIT_EXCEEDED", too_big)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nothing to answer
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > cap:
                return await _reject(send, 413, "REQUEST_LIMIT_EXCEEDED", too_big)
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if not content_type:
            return await _reject(send, 415, "INVALID_PARAMETER_VALUE",
                                 "no Content-Type header; send Content-Type: application/json")
        if content_type == b"application/json":
            depth = json_depth(bytes(body))
            if depth > self.limits.max_json_depth:
                return await _reject(send, 400, "INVALID_PARAMETER_VALUE",
                                     f"JSON nested {depth} levels deep, over the cap of {self.limits.max_json_depth}; "
                                     'send {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}')
        await self.app(scope, _replay(bytes(body), receive), _short_errors(send))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive callable that yields the buffered body once, then whatever the client sends next (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict:
        return pending.pop() if pending else await receive()

    return replay


LIMITS = RequestLimits.from_env()  # at import: uvicorn imports this module at start-up, so a bad value stops it
_GUARDS: dict[int, RequestGuard] = {}  # id(app) -> its guard: one per server process, not one per connection


class GuardedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]  (a class chosen at import)
    """uvicorn's HTTP protocol (h11 or httptools, as `--http auto` picks) with the app wrapped in RequestGuard."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = getattr(self, "app", None)
        if app is None:  # both implementations keep the ASGI app here (uvicorn 0.30 - 0.54)
            raise RuntimeError("this uvicorn's HTTP protocol keeps no `app` attribute: ncood's request guard cannot "
                               "attach; unset UVICORN_HTTP or pin uvicorn to a version ncood was tested with")
        if not isinstance(app, RequestGuard):
            self.app = _GUARDS.setdefault(id(app), RequestGuard(app, LIMITS))
