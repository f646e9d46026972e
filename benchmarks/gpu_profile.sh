#!/usr/bin/env bash
# A warm evaluation under py-spy (GIL samples of every process), summarized by benchmarks/spy_summary.py:
#   bash benchmarks/gpu_profile.sh MODEL_DIR SUITE INSTANCES OUT   (after gpu_env.sh's wheels are installed)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 suite=$2 n=$3 out=$4
mkdir -p "$out"
py-spy record -r 100 --gil --subprocesses --format raw -o "$out/spy.raw" -- python3 -m benchmarks.helm_speed \
  --model "$model" --size profile --suites "$suite" --modes warm --budgets 24 --instances "$suite=$n" \
  --helm-processes 3 --out /tmp/profile-run > "$out/spy.log" 2>&1 || echo "py-spy failed: $(tail -3 "$out/spy.log")"
# One file: a device call brings back only a few.
python3 -m benchmarks.spy_summary "$out/spy.raw" --top 70 > "$out/spy.txt" || true
# py-spy names a frame "function (file:line)", no class: the parts are matched by their files.
for part in helm/benchmark/runner.py helm/benchmark/executor.py helm/benchmark/metrics/ \
  evaluation/engine/server/generation.py; do
  { echo; echo "# within $part"; python3 -m benchmarks.spy_summary "$out/spy.raw" --within "$part" --top 50; } \
    >> "$out/spy.txt" || true
done
rm -f "$out/spy.raw"; cp /tmp/profile-run/results.json "$out/" || true
