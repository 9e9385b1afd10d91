"""Python client of the ncood OoD scorer served by `mlflow models serve` (standard library only).

    python deploy/serving/client.py img1.png img2.jpg ...                    # http://127.0.0.1:5001
    python deploy/serving/client.py --url http://127.0.0.1:5001 --json photos/*.jpg

Sends the files' bytes base64-encoded (any size or colour mode: the server prepares them like the training
data), in requests of at most --batch images, and prints one line per image: the GMM log-density (higher = more
in-distribution), the ID/OoD decision, the predicted class and the other scores. A rejected request (HTTP 4xx)
prints the server's message, which names the bad rows, and exits with status 1.

As a library: `score_files(url, paths)` -> list of dicts, `score_bytes(url, [bytes, ...])` -> list of dicts.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_URL = "http://127.0.0.1:5001"


class ScoringError(RuntimeError):
    """The server refused the request; .status is the HTTP code, the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url.rstrip("/") + "/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            message = json.loads(text)["message"]
            # MLflow prefixes the input's repr; keep our part (the request guard cuts it for models logged with this
            # ncood or later; this handles older ones)
            message = message.split("\nError: ", 1)[-1]
        except (ValueError, KeyError):
            message = text
        raise ScoringError(e.code, message) from None


def score_bytes(url: str, images: Sequence[bytes], batch: int = 64, timeout: float = 60.0) -> list[dict]:
    """Score image file contents (PNG, JPEG, ...); one dict per image, in order."""
    out: list[dict] = []
    for start in range(0, len(images), batch):
        rows = [[base64.b64encode(b).decode("ascii")] for b in images[start:start + batch]]
        try:
            out += _post(url, {"dataframe_split": {"columns": ["image"], "data": rows}}, timeout)["predictions"]
        except ScoringError as e:
            if start:  # row numbers in the server's message count from this request's first image
                raise ScoringError(e.status, f"{e} (rows of the request starting at image {start})") from None
            raise
    return out


def score_files(url: str, paths: Iterable[str | Path], batch: int = 64, timeout: float = 60.0) -> list[dict]:
    return score_bytes(url, [Path(p).read_bytes() for p in paths], batch, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server base URL (default {DEFAULT_URL})")
    p.add_argument("--batch", type=int, default=64, help="images per request (the server caps it, default 256)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    args = p.parse_args(argv)
    missing = [f for f in args.images if not Path(f).exists() or Path(f).is_dir()]  # pipes (/dev/stdin) pass
    if missing:  # before any request: a typo should not cost the server's time or half a batch
        p.error(f"not a file: {', '.join(missing)}")
    try:
        images = [Path(f).read_bytes() for f in args.images]
    except OSError as e:  # e.g. a file it may not read
        print(f"cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        preds = score_bytes(args.url, images, args.batch)
    except ScoringError as e:
        print(f"rejected: {e}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"cannot reach {args.url}: {e.reason} (is `mlflow models serve` running?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{"file": f, **pr} for f, pr in zip(args.images, preds)], indent=2))
        return 0
    width = max(len(f) for f in args.images)
    print(f"{'file':<{width}s}  {'gmm_log_density':>15s}  {'decision':>8s}  {'class':>10s}  {'msp':>6s}  "
          f"{'max_logit':>9s}  {'feature_norm':>12s}")
    for f, pr in zip(args.images, preds):
        print(f"{f:<{width}s}  {pr['gmm_log_density']:15.3f}  {'OoD' if pr['is_ood'] else 'ID':>8s}  "
              f"{pr['predicted_class']:>10s}  {pr['msp']:6.3f}  {pr['max_logit']:9.3f}  {pr['feature_norm']:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
