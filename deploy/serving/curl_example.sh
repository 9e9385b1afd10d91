#!/usr/bin/env bash
# Score image files with a running ncood OoD scorer (`mlflow models serve`, see README.md next to this file).
#
#   deploy/serving/curl_example.sh digit.png photo.jpg            # server at http://127.0.0.1:5001
#   URL=http://127.0.0.1:8080 deploy/serving/curl_example.sh x.png
#
# One request, one row per image: {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}.
# The JSON goes through stdin (--data-binary @-), so large images never hit the argument-length limit.
set -euo pipefail
URL=${URL:-http://127.0.0.1:5001}
[ $# -ge 1 ] || { echo "usage: $0 IMAGE [IMAGE ...]" >&2; exit 2; }

rows=""
for img in "$@"; do
  b64=$(base64 < "$img" | tr -d '\n')   # portable: GNU and BSD base64 (GNU: base64 -w0 "$img")
  rows="${rows:+$rows,}[\"$b64\"]"
done

printf '{"dataframe_split": {"columns": ["image"], "data": [%s]}}' "$rows" |
  curl -sS -X POST "$URL/invocations" -H 'Content-Type: application/json' --data-binary @- \
       -w '\nHTTP %{http_code}\n'
