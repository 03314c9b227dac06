#!/usr/bin/env bash
# The GPU check of issue 19: one agent with every layer on the GPU at 1, 8,
# 32 and 64 concurrent streams, against llama.cpp's own server on the same
# model and GPU, as a table.
#
# It fits the device tool's limits (/work/.library/device/README.md): 64 MiB
# travels, nothing can be downloaded there, 15 minutes of device time in all.
# So it carries (about 30 MB) a trimmed llama-cpp-python source, the few
# wheels the agent needs and a redis-server, builds llama.cpp with CUDA there
# once for Hopper (the libraries llama-cpp-python loads, and llama-server,
# from the same source), writes a random-weight model there
# (bench/gpu_model.py), and drives the agent without a web process
# (bench/agent_streams.py).  Give the device run a timeout_s of 600: the CUDA
# build is most of it.
#
#   scripts/gpu_check.sh prepare     # here: fill $GPU_CARRY (default .gpu/);
#                                    # add "/.gpu/" to .git/info/exclude
#   bash scripts/gpu_check.sh gpu    # on the device: `run` with carry [".gpu"]
#   scripts/gpu_check.sh cpu-smoke   # here, no GPU: the same steps with the
#                                    # installed llama-cpp-python, a tiny model
#                                    # and small counts, to check the script
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARRY=${GPU_CARRY:-$ROOT/.gpu}
LLAMA_VERSION=0.3.36
mode=${1:-}
redis_pid="" agent_pid="" server_pid=""
trap 'kill $agent_pid $server_pid $redis_pid 2>/dev/null || true' EXIT

prepare() {
  local python=${PYTHON:-.venv/bin/python}
  local work
  work=$(mktemp -d)
  mkdir -p "$CARRY/wheels" "$CARRY/redis"
  # llama-cpp-python's source: its Python package and the llama.cpp it
  # binds, without what the build does not need (models, docs, examples,
  # other backends): 76 MB whole, too big to travel.
  "$python" -m pip download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_VERSION" -d "$work"
  tar -xzf "$work/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$work"
  local src=$work/llama_cpp_python-$LLAMA_VERSION
  local cpp=$src/vendor/llama.cpp
  # (The sdist also carries llama.cpp's git history: 38 MB.)
  rm -rf "$src/.git" "$cpp/.git" "$cpp/models" "$cpp/docs" "$cpp/media" \
    "$cpp/gguf-py" "$cpp/tests" "$cpp/.github" "$cpp/.devops" "$cpp/scripts" \
    "$cpp/examples" "$cpp/benches" "$cpp/conversion" "$cpp/tools/ui/tests" \
    "$cpp/tools/mtmd/test-3.mp4" "$src/docs" "$src/examples" "$src/tests"
  for backend in vulkan sycl metal opencl cann musa kompute webgpu zdnn hip \
    rpc blas et hexagon openvino virtgpu zendnn; do
    rm -rf "$cpp/ggml/src/ggml-$backend"
  done
  tar -czf "$CARRY/llama_cpp_python-src.tar.gz" -C "$work" "llama_cpp_python-$LLAMA_VERSION"
  # What the agent imports besides what the device's Python has (Python
  # 3.12 there: pure-Python wheels only).
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d "$CARRY/wheels" Django==5.2.19 asgiref sqlparse channels==4.3.2 \
    channels-redis==4.3.0 redis==8.1.0 dj-database-url==3.1.2 \
    django-stubs-ext==6.1.2 djangorestframework==3.18.3 drf-spectacular==0.30.0 \
    drf-spectacular-sidecar==2026.10.1 uritemplate inflection daphne==4.2.3 \
    diskcache gguf==0.19.0
  # redis-server and the libraries it links that the device may lack.
  cp -L "$(command -v redis-server)" "$CARRY/redis/redis-server"
  ldd "$(command -v redis-server)" | awk '/=> \// {print $3}' |
    grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s)\.so' |
    xargs -I{} cp -L {} "$CARRY/redis/"
  rm -rf "$work"
  du -sh "$CARRY"
}

# The agent's desired state: the model, every layer on the GPU, 1,024 tokens
# per slot, F16 caches and greedy sampling without penalties, as llama-server
# is run below.
desired_state() {
  cat <<EOF
{"model": {"LocalToAgent": "$1"},
 "inference_parameters": {"n_gpu_layers": $2, "context_size": 1024,
  "k_cache_dtype": "F16", "v_cache_dtype": "F16", "temperature": 0.0,
  "penalty_repeat": 1.0, "penalty_presence": 0.0, "penalty_frequency": 0.0}}
EOF
}

measure() {
  # $1 python, $2 model size, $3 n_gpu_layers, $4 slots, $5 streams,
  # $6 tokens, $7 llama-server binary (or ""), $8 results folder
  local python=$1 size=$2 layers=$3 slots=$4 streams=$5 tokens=$6 server=$7
  local out=$8 model=/tmp/gpu-check-model.gguf port=${REDIS_PORT:-6391}
  mkdir -p "$out"
  "$python" bench/gpu_model.py --out "$model" --size "$size"
  export REDIS_URL=redis://127.0.0.1:$port/0 DJANGO_SETTINGS_MODULE=paddler_project.settings
  export PYTHONPATH=$ROOT:${PYTHONPATH:-}
  "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$out/redis.log" 2>&1 &
  redis_pid=$!
  "$python" - "$port" "$(desired_state "$model" "$layers")" <<'PY'
import sys, time, redis
client = redis.Redis(port=int(sys.argv[1]))
for _ in range(100):
    try:
        client.set("paddler:desired_state", sys.argv[2]); break
    except redis.ConnectionError:
        time.sleep(0.1)
PY
  "$python" manage.py run_agent --name gpu-check --slots "$slots" \
    --n-gpu-layers "$layers" >"$out/agent.log" 2>&1 &
  agent_pid=$!
  "$python" - "$port" <<'PY'
import json, sys, time, redis
client = redis.Redis(port=int(sys.argv[1]))
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    for member in client.smembers("paddler:agents"):
        raw = client.get(f"paddler:agent:{member.decode()}:status")
        if raw and json.loads(raw)["slots_total"] > 0:
            sys.exit(0)
    time.sleep(0.5)
sys.exit("the agent did not become ready (see agent.log)")
PY
  "$python" bench/agent_streams.py --streams "$streams" --tokens "$tokens" |
    tee "$out/agent.jsonl"
  kill "$agent_pid"
  wait "$agent_pid" 2>/dev/null || true
  : >"$out/server.jsonl"
  if [ -n "$server" ]; then
    local ngl=99
    [ "$layers" = 0 ] && ngl=0
    "$server" -m "$model" -ngl "$ngl" -np "$slots" -c $((slots * 1024)) \
      --port 8091 --host 127.0.0.1 >"$out/llama-server.log" 2>&1 &
    server_pid=$!
    "$python" - <<'PY'
import time, httpx
for _ in range(600):
    try:
        if httpx.get("http://127.0.0.1:8091/health", timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
PY
    "$python" bench/agent_streams.py --llama-server http://127.0.0.1:8091 \
      --streams "$streams" --tokens "$tokens" | tee "$out/server.jsonl"
  fi
  "$python" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
agent = [json.loads(l) for l in (out / "agent.jsonl").read_text().splitlines()]
server = {r["streams"]: r for r in map(json.loads, (out / "server.jsonl").read_text().splitlines())}
print("| streams | agent tok/s | agent TTFT p50 (ms) | llama-server tok/s | agent / llama-server |")
print("|---|---|---|---|---|")
for row in agent:
    other = server.get(row["streams"])
    ratio = f"{row['tokens_per_s'] / other['tokens_per_s']:.2f}x" if other else ""
    theirs = f"{other['tokens_per_s']:.0f}" if other else "not run"
    print(f"| {row['streams']} | {row['tokens_per_s']:.0f} | {row['ttft_p50_ms']:.0f} | {theirs} | {ratio} |")
PY
}

case "$mode" in
  prepare)
    prepare
    ;;
  gpu)
    # On the device: Python 3.12 with CUDA, 16 cores, nothing to download.
    out=${OUT:-/tmp/gpu-check}
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      "$CARRY"/wheels/*.whl
    tar -xzf "$CARRY/llama_cpp_python-src.tar.gz" -C /tmp
    src=/tmp/llama_cpp_python-$LLAMA_VERSION
    # One CUDA build for Hopper (sm_90): the shared library llama-cpp-python
    # loads (LLAMA_CPP_LIB_PATH) and llama-server, from the same source.
    cmake -S "$src/vendor/llama.cpp" -B /tmp/llama-build -G Ninja \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF >"$out-cmake.log" 2>&1 ||
      { tail -50 "$out-cmake.log"; exit 1; }
    time cmake --build /tmp/llama-build -j "$(nproc)" \
      --target llama mtmd llama-server >"$out-build.log" 2>&1 ||
      { tail -50 "$out-build.log"; exit 1; }
    # llama-cpp-python's own ctypes bindings load these two libraries from
    # the paths its environment variables name.
    lib=$(dirname "$(find /tmp/llama-build -name 'libllama.so' | head -1)")
    mtmd=$(dirname "$(find /tmp/llama-build -name 'libmtmd.so' | head -1)")
    export LLAMA_CPP_LIB_PATH=$lib MTMD_CPP_LIB=$mtmd
    export LD_LIBRARY_PATH=$lib:$mtmd:$CARRY/redis:${LD_LIBRARY_PATH:-}
    export PYTHONPATH=$src:/tmp/site:$ROOT
    REDIS_SERVER=$CARRY/redis/redis-server
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    measure python3 1b -1 64 1,8,32,64 256 /tmp/llama-build/bin/llama-server "$out"
    ;;
  cpu-smoke)
    REDIS_SERVER=$(command -v redis-server)
    server=$(command -v llama-server || true)
    [ -z "$server" ] && [ -x var/bench-venv/bin/llama-server ] &&
      server=var/bench-venv/bin/llama-server
    measure .venv/bin/python tiny 0 8 1,8 16 "$server" /tmp/gpu-check-cpu
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
