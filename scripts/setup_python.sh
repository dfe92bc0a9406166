#!/usr/bin/env bash
# Creates the Python environment used to generate the CLIP parity fixture and
# to run the PyTorch baseline benchmark. The venv lives OUTSIDE the repository.
#
#   EQUIRUN_VENV=/path/to/venv scripts/setup_python.sh
#
# Only plain PyPI is reachable here, so torch comes from PyPI (on Linux x86_64
# that is the CUDA-enabled wheel, several GB; it runs fine on CPU).
set -euo pipefail

VENV="${EQUIRUN_VENV:-/work/venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv at $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

"$VENV/bin/python" -m pip install --upgrade pip wheel
"$VENV/bin/python" -m pip install torch transformers safetensors numpy pillow
# open_clip: ResNet/OpenCLIP parity fixtures and the RN50 baseline (torchvision is optional: the
# scripts stub it when its wheel does not match the installed torch)
"$VENV/bin/python" -m pip install --no-deps open-clip-torch ftfy regex

"$VENV/bin/python" - <<'PY'
import torch, transformers, safetensors, numpy, PIL
print("torch", torch.__version__)
print("transformers", transformers.__version__)
print("safetensors", safetensors.__version__)
print("numpy", numpy.__version__)
print("pillow", PIL.__version__)
PY
echo "venv ready: $VENV (activate with: source $VENV/bin/activate)" >&2
