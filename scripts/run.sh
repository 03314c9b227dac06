#!/usr/bin/env bash
# `make run`: set up, then run the web tier and one agent on the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# From here on, what the demo writes (its secrets, the SQLite database with
# password hashes and sessions) is readable by this user only.
umask 077

PORT=${PADDLER_PORT:-8000}
HOST=${PADDLER_HOST:-127.0.0.1}
scripts/demo_secrets.sh var
export PADDLER_MANAGEMENT_TOKEN=${PADDLER_MANAGEMENT_TOKEN:-$(cat var/management-token)}
# One key for every process of this demo, kept across restarts.
export PADDLER_SECRET_KEY=${PADDLER_SECRET_KEY:-$(cat var/secret-key)}

py=.venv/bin/python
$py manage.py migrate -v0
$py manage.py collectstatic --noinput -v0
$py manage.py set_desired_state \
  --local-model "$PWD/var/models/gemma3-270m-q4_k_m.gguf" --gemma-template >/dev/null
password=$($py manage.py ensure_demo_user)

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "==> stopping"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/daphne -b "$HOST" -p "$PORT" paddler_project.asgi:application &
pids+=($!)
$py manage.py run_agent --name demo-agent --slots 4 &
pids+=($!)

cat <<MSG

  Paddler platform is running (Ctrl-C stops it).

  Panel:            http://$HOST:$PORT/           login: admin / $password
  Django admin:     http://$HOST:$PORT/admin/
  Inference API:    http://$HOST:$PORT/api/v1/continue_from_raw_prompt
  Management API:   http://$HOST:$PORT/api/v1/agents
                    (header  Authorization: Bearer $PADDLER_MANAGEMENT_TOKEN)

  Try:  curl -N http://$HOST:$PORT/api/v1/continue_from_raw_prompt \\
          -d '{"raw_prompt": "The capital of France is", "max_tokens": 20}'

MSG
wait -n "${pids[@]}"
