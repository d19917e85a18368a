#!/usr/bin/env bash
# A separate virtualenv with IBM aihwkit for cross-checks and benchmark rows. aihwkit is never a
# dependency of analog-onnx: it pins its own torch and torchvision, so it lives in .venv-aihwkit.
#
#   bash tools/make_aihwkit_venv.sh            # once (downloads aihwkit and torchvision)
#   .venv-aihwkit/bin/python tools/bench_kernels.py   # now with aihwkit's row beside ours
#
# The pins matter: aihwkit 1.1.0 ships a CPython 3.11 wheel, and an unpinned torchvision would pull
# a multi-GB CUDA torch. Only aihwkit's Torch* tiles (TorchInferenceRPUConfig) run on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${AIHWKIT_VENV:-.venv-aihwkit}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import aihwkit, analog_onnx" 2>/dev/null; then
  echo "$VENV is ready"
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0 torchvision==0.28.0 aihwkit==1.1.0
"$VENV/bin/pip" install --quiet -e . scipy
"$VENV/bin/python" -c "import aihwkit, torch; print('aihwkit', aihwkit.__version__, 'torch', torch.__version__)"
