"""ncood.serve.guard without a server: the nesting depth it computes on raw bytes, its limits from the
environment, and the error answers it shortens. The guard in front of the real `mlflow models serve` is tested in
tests/test_serve.py."""
from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest

from ncood.serve.guard import (MAX_ERROR_CHARS, REQUEST_LIMITS_ENV, RequestGuard, RequestLimits, json_depth,
                               short_error, short_error_body)


def _depth(obj) -> int:
    """Reference: nesting depth of a parsed JSON value."""
    if isinstance(obj, list):
        return 1 + max((_depth(v) for v in obj), default=0)
    if isinstance(obj, dict):
        return 1 + max((_depth(v) for v in obj.values()), default=0)
    return 0


def _random_json(rng: random.Random, level: int = 0):
    """Values whose strings (keys too) hold brackets, quotes and backslashes: none of them is nesting."""
    r = rng.random()
    if level > 6 or r < 0.3:
        return rng.choice([1, 2.5, None, True, "a[b{", "]]}}", '"', "\\", '\\"[', "x\ny"])
    if r < 0.65:
        return [_random_json(rng, level + 1) for _ in range(rng.randint(0, 3))]
    return {f"{rng.choice(['k', '[', '}', chr(92) + chr(34) + '{'])}{i}": _random_json(rng, level + 1)
            for i in range(rng.randint(0, 3))}


def test_json_depth_matches_the_parsed_depth():
    rng = random.Random(0)
    for _ in range(1500):
        value = _random_json(rng)
        text = json.dumps(value, indent=rng.choice([None, 1]))
        assert json_depth(text.encode()) == _depth(value), text


def test_json_depth_of_attacks_and_big_bodies():
    assert json_depth(b"[" * 5000 + b"]" * 5000) == 5000
    assert json_depth(b"[" * 100_000) == 100_000  # unterminated: no recursion, no crash
    assert json_depth(b"") == 0 and json_depth(b"42") == 0
    chunked = b"[" * 1_500_000 + b"]" * 1_500_000  # crosses the 1 MiB chunks: the running count carries over
    assert json_depth(chunked) == 1_500_000
    request = json.dumps({"dataframe_split": {"columns": ["image"], "data": [["QUJD" * 300_000]] * 3}}).encode()
    assert json_depth(request) == 4


def test_request_limits_from_env():
    assert RequestLimits.from_env({}) == RequestLimits()
    assert RequestLimits.from_env({REQUEST_LIMITS_ENV: '{"max_json_depth": 8}'}).max_json_depth == 8
    with pytest.raises(ValueError, match=f"{REQUEST_LIMITS_ENV} is not valid JSON"):
        RequestLimits.from_env({REQUEST_LIMITS_ENV: "{max"})
    with pytest.raises(ValueError, match="keys from"):
        RequestLimits.from_env({REQUEST_LIMITS_ENV: '{"max_bytes": 5}'})
    with pytest.raises(ValueError, match="max_body_bytes must be an int >= 1"):
        RequestLimits.from_env({REQUEST_LIMITS_ENV: '{"max_body_bytes": 0}'})


def test_short_error_drops_mlflows_copy_of_the_input():
    reason = "1 of 1 images rejected: row 0: image is about 5889609 bytes, over the cap of 4194304 bytes"
    data = {"image": np.array(["iVBOR" + "A" * 200_000])}  # what the scoring server parses `inputs` into
    # the f-strings of mlflow/pyfunc/scoring_server/__init__.py:361 and mlflow/pyfunc/__init__.py:739
    assert short_error(f"Failed to predict data '{data}'. \nError: {reason}") == reason
    schema = "['image': string (required)]"
    missing = "Model is missing inputs ['image']. Note that there were extra inputs: ['img']."
    enforce = f"Failed to enforce schema of data '{data}' with schema '{schema}'. Error: {missing}"
    assert short_error(f"Failed to predict data '{data}'. \nError: {enforce}") == \
        f"Failed to enforce schema of the request with schema '{schema}'. Error: {missing}"
    assert short_error(reason) == reason  # ncood's own messages and the guard's pass as they are
    long = "x" * 10 * MAX_ERROR_CHARS
    cut = short_error(long)
    assert len(cut) < MAX_ERROR_CHARS + 50 and cut.startswith("x" * 100) and cut.endswith("x" * 100)
    assert "characters cut" in cut
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": f"Failed to predict data '{data}'. "
                       f"\nError: {reason}", "sqlstate": "KAM00"}).encode()
    assert json.loads(short_error_body(body)) == {"error_code": "INVALID_PARAMETER_VALUE", "message": reason,
                                                  "sqlstate": "KAM00"}
    assert short_error_body(b"Request processing time exceeded limit") == b"Request processing time exceeded limit"


def _through_guard(status: int, chunks: list[bytes]) -> list[dict]:
    """The ASGI messages a client gets when an app answers `status` with a JSON body sent in `chunks`."""
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(sum(map(len, chunks))).encode())]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", b"application/json")]}
    asyncio.run(RequestGuard(app, RequestLimits())(scope, receive, send))
    return sent


def test_guard_shortens_error_answers_and_passes_the_rest():
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                       "message": "Failed to predict data '" + "A" * 100_000 + "'. \nError: row 0: bad"}).encode()
    start, *rest = _through_guard(400, [body[:1000], body[1000:50_000], body[50_000:]])  # streamed in parts
    short = b"".join(m["body"] for m in rest)
    assert start["status"] == 400 and json.loads(short)["message"] == "row 0: bad"
    assert dict(start["headers"])[b"content-length"] == str(len(short)).encode()
    ok = json.dumps({"predictions": [{"note": "Failed to predict data 'x'. \nError: y"}]}).encode()
    sent = _through_guard(200, [ok[:10], ok[10:]])  # a success: the same messages, not buffered
    assert [m.get("body") for m in sent[1:]] == [ok[:10], ok[10:]] and sent[0]["status"] == 200
