"""ncood.serve.guard without a server: the nesting depth it computes on raw bytes, and its limits from the
environment. The guard in front of the real `mlflow models serve` is tested in tests/test_serve.py."""
from __future__ import annotations

import json
import random

import pytest

from ncood.serve.guard import REQUEST_LIMITS_ENV, RequestLimits, json_depth


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
