#!/usr/bin/env bash
# Run a command on the GPU box with the wheels of `bash benchmarks/gpu_wheels.sh` (.whl/) installed:
#   bash benchmarks/gpu_env.sh python3 -m benchmarks.helm_speed --size 1b ...
set -euo pipefail
cd "$(dirname "$0")/.."
# Once per machine: later commands of the same call find the wheels installed.
if [ ! -f /tmp/site/.gpu_env_installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  touch /tmp/site/.gpu_env_installed
fi
export PYTHONPATH=/tmp/site:$PWD/.whl/stubs:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
exec "$@"
