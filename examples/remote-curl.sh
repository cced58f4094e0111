#!/bin/sh
# Take one job of a type from a workers service and complete it, with curl and jq alone:
# the worker verbs of the HTTP API (docs/remote.md).
#
#   WORKERS_URL=http://127.0.0.1:8181 WORKERS_TOKEN=... sh examples/remote-curl.sh EchoJob
#
# The token's role must be worker (or admin). Prints the job it took, then the outcome.
set -eu
type=${1:?usage: remote-curl.sh JOB_TYPE}
url=${WORKERS_URL:?set WORKERS_URL}
auth="Authorization: Bearer ${WORKERS_TOKEN:?set WORKERS_TOKEN}"

# wait up to 20 s for one job of the type
jobs=$(curl -sS --fail-with-body -H "$auth" -H 'Content-Type: application/json' \
  -d "{\"types\": [\"$type\"], \"max\": 1, \"wait\": 20, \"worker\": \"curl-$(hostname)\"}" \
  "$url/api/work")
job=$(printf '%s' "$jobs" | jq -c '.jobs[0] // empty')
if [ -z "$job" ]; then
  echo "no $type job to take" >&2
  exit 1
fi
id=$(printf '%s' "$job" | jq -r .id)
token=$(printf '%s' "$job" | jq -r .token)
echo "took $job"

# the work itself goes here; report progress and a log line, then the result
post() {
  curl -sS --fail-with-body -H "$auth" -H 'Content-Type: application/json' -d "$2" \
    "$url/api/work/$id/$1"
}
post progress "{\"token\": \"$token\", \"completed\": 1, \"total\": 1}" >/dev/null
post log "{\"token\": \"$token\", \"message\": \"done by curl\"}" >/dev/null
post done "{\"token\": \"$token\", \"result\": {\"by\": \"curl\"}}"
echo
