#!/usr/bin/env bash
# Create (or update) the Python environment that repnas_mm runs in. Idempotent.
#
#   scripts/setup_env.sh                 # .venv/ at the repo root (what `make setup` does)
#   VENV=/path/to/env scripts/setup_env.sh   # install into an existing environment instead
#
# Steps: venv -> torch -> NVIDIA's CUDA compiler wheels (for a CUDA torch) -> mmcv 2.1.0 with
# compiled ops (built once by scripts/build_mmcv.py and cached outside the repo; CUDA ops where a
# GPU is visible or FORCE_CUDA=1) -> the rest of the stack -> mmdeploy + mmdeploy-runtime + openmim
# (--no-deps) -> repnas_mm (editable) -> a check that everything imports and mmcv's ops are compiled.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
REQ="$ROOT/requirements"
PIP_FLAGS=(--disable-pip-version-check --no-input)
START=$(date +%s)
STEP=""
NSTEPS=8
I=0

step() {
  I=$((I + 1))
  STEP="$*"
  echo "[setup] step $I/$NSTEPS: $* ($(($(date +%s) - START)) s)"
}
on_error() {
  local rc=$?
  echo "[setup] FAILED at step $I/$NSTEPS: $STEP (exit $rc)" >&2
  exit "$rc"
}
trap on_error ERR

step "python environment at $VENV"
if [ -x "$VENV/bin/python" ]; then
  echo "[setup]   exists: $("$VENV/bin/python" --version)"
else
  command -v "$PYTHON" >/dev/null || {
    echo "[setup] no '$PYTHON' on PATH; set PYTHON=/path/to/python3.11" >&2; false; }
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || {
    echo "[setup] repnas_mm is pinned to Python 3.11; set PYTHON=/path/to/python3.11" >&2; false; }
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip "${PIP_FLAGS[@]}")

step "torch + torchvision ($REQ/torch.txt)"
"${PIP[@]}" install -q -r "$REQ/torch.txt"

step "CUDA compiler for a CUDA build of torch ($REQ/cuda.txt)"
# NVIDIA's nvcc, crt, nvvm and cccl wheels at torch's CUDA version, --no-deps (their runtime
# libraries are torch's). build_mmcv.py compiles CUDA ops with them where a GPU is visible or
# FORCE_CUDA=1; on a CPU machine they only let the tests compile a CUDA kernel.
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)'; then
  "${PIP[@]}" install -q --no-deps -r "$REQ/cuda.txt" || echo "[setup]   WARNING: NVIDIA's" \
    "compiler wheels could not be installed: mmcv gets CPU ops unless a CUDA toolkit of" \
    "torch's version is installed (python scripts/build_mmcv.py --check-cuda says which)" >&2
else
  echo "[setup]   torch is a CPU build: no CUDA compiler needed"
fi

step "mmcv 2.1.0 with compiled ops"
if "$PY" "$ROOT/scripts/build_mmcv.py" --installed; then
  WHEEL_DIR="$("$PY" "$ROOT/scripts/build_mmcv.py" --print-variant)"
else
  WHEEL="$("$PY" "$ROOT/scripts/build_mmcv.py")"
  WHEEL_DIR="$(dirname "$WHEEL")"
  # An mmcv 2.1.0 of the other flavour (CPU ops where CUDA ops are wanted now) is replaced.
  if "$PY" -c 'import mmcv, sys; sys.exit(mmcv.__version__ != "2.1.0")' 2>/dev/null; then
    "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL"
  fi
fi

step "OpenMMLab stack and tools ($REQ/runtime.txt, $REQ/tests.txt, $REQ/ray.txt)"
# --only-binary mmcv: never let pip try the (unbuildable) sdist; the wheel comes from our cache.
"${PIP[@]}" install -q --find-links "$WHEEL_DIR" --only-binary mmcv \
  -c "$REQ/torch.txt" -r "$REQ/runtime.txt" -r "$REQ/tests.txt" -r "$REQ/ray.txt"

step "mmdeploy, its SDK runtime and openmim, without their pins ($REQ/deploy.txt, $REQ/mim.txt)"
"${PIP[@]}" install -q --no-deps -r "$REQ/deploy.txt" -r "$REQ/mim.txt"

step "repnas_mm (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

step "check"
"$PY" "$ROOT/tools/collect_env.py" --check

echo "[setup] done in $(($(date +%s) - START)) s; interpreter: $PY"
