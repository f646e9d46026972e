#!/usr/bin/env bash
# The evaluation-speed measurement of docs/benchmarks.md ("Evaluation speed"), one model size per call,
# on a GPU box that has torch and transformers but no crfm-helm (run `bash benchmarks/gpu_wheels.sh`
# first, where packages can be downloaded, and bring .whl/ along):
#   bash benchmarks/gpu_issue8.sh 1b            # modes ours, A, warm, warm-single (about 8 minutes on an H200)
#   bash benchmarks/gpu_issue8.sh 7b ours warm  # other modes; results under $OUT (default var/); no run
#                                               # starts after DEADLINE_S (540) seconds: one device call
#   SUITES=prefill-mc bash benchmarks/gpu_issue8.sh 1b ours warm warm@384 A   # one suite; warm@N: N HELM threads
# warm-single is warm with the server's HTTP side in the model's process (session 3's layout): the pair
# measures the front process of split.py. fp32 (the bf16 agreement reference) is another mode.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:?usage: gpu_issue8.sh 1b|7b [modes...]}
shift
modes=${*:-ours A warm warm-single}
case $size in
  # 1b also times decode steps alone (64 rows, 128 tokens; session 1: 8.8 ms a step with graphs).
  1b) instances="prefill-mc=1000 generation=25"; extra="--decode-bench 64 128" ;;
  7b) instances="prefill-mc=500 generation=12"; extra="" ;;
  *) echo "size must be 1b or 7b" >&2; exit 2 ;;
esac
out=${OUT:-var}/helm-speed-$size
# shellcheck disable=SC2086  # modes and instances are lists of words
bash benchmarks/gpu_env.sh python3 -m benchmarks.helm_speed --size "$size" --suites ${SUITES:-prefill-mc generation} --modes $modes --budgets 24 \
  --instances $instances --helm-processes 3 --deadline-s "${DEADLINE_S:-540}" --out "$out" $extra
