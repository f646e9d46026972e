#!/usr/bin/env bash
# Wheels that let the GPU benchmarks run HELM on a Python 3.12 box that has torch and transformers
# but no crfm-helm (the `device` machine): writes .whl/ (git-ignored) for a `pip install --target`.
#   bash benchmarks/gpu_wheels.sh
# On the box:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#              export PYTHONPATH=/tmp/site:$PWD/.whl/stubs:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl
mkdir -p "$OUT/stubs/spacy"
# zstandard: 0.18 (what HELM pins) has no cp312 wheel; 0.23 has the same API.
# crfm-helm and those of its needs that the box lacks (it has numpy, pandas, pyarrow, scipy,
# scikit-learn, torch, torchvision, transformers, requests, tqdm, absl-py, regex, joblib, click);
# py-spy for the profiles of benchmarks/spy_summary.py.
PKGS="crfm-helm==0.5.16 cattrs==22.2.0 colorlog==6.12.0 dacite==1.9.2 Mako==1.4.3 pyhocon==0.3.63
ubelt==1.4.3 retrying==1.4.2 zstandard==0.23.0 sqlitedict==2.1.0 bottle==0.12.25 datasets==3.6.0
pyarrow-hotfix==0.7 nltk==3.10.4 rouge-score==0.1.2 uncertainty-calibration==0.1.4 dill==0.3.8
multiprocess==0.70.16 py-spy==0.4.1"
for pkg in $PKGS; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "$pkg" 2>/dev/null \
  || python3 -m pip wheel -q --no-deps -w "$OUT" "$pkg"  # pure-Python sdists become py3 wheels
done
# HELM imports spaCy at the top of modules these suites never use; spaCy itself is 100+ MiB.
echo '"""Stand-in: the offline suites use no spaCy model."""' > "$OUT/stubs/spacy/__init__.py"
du -sh "$OUT"
