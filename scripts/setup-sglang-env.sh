#!/usr/bin/env bash
# Create (or update) a Python environment for joulebench's SGLang backend on a CUDA host with network.
#
#   scripts/setup-sglang-env.sh [VENV]        (default: .venvs/sglang, where joulebench finds it)
#
# SGLang runs on NVIDIA GPUs only here (its CPU kernels are not on the package index). Idempotent:
# when VENV already imports sglang's package metadata and joulebench, it only refreshes the editable
# joulebench install. Environment knobs:
#   PYTHON           interpreter used to create the venv (default: python3.12, else python3)
#   SGLANG_SPEC      what to install (default: sglang==0.5.17, the newest release that pins torch==2.11.0)
#   SGLANG_EXTRAS    its CUDA 13 companions (default: sglang-kernel==0.4.5 flashinfer-python[cu13]==0.6.15.post1)
#   TORCH_INDEX_URL  where torch 2.11.0 for CUDA 13 comes from (default: https://download.pytorch.org/whl/cu130)
#
# For a GPU machine without network, build pieces elsewhere instead: benchmarks/sglang_gpu_pack.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venvs/sglang}"
PYTHON="${PYTHON:-$(command -v python3.12 || command -v python3)}"
SGLANG_SPEC="${SGLANG_SPEC:-sglang==0.5.17}"
SGLANG_EXTRAS="${SGLANG_EXTRAS:-sglang-kernel==0.4.5 flashinfer-python[cu13]==0.6.15.post1}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu130}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-sglang-env] creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PY="$VENV/bin/python"

if "$PY" -c "import importlib.metadata as m, joulebench; m.version('sglang')" >/dev/null 2>&1; then
  echo "[setup-sglang-env] sglang already present in $VENV"
  "$PY" -m pip install --quiet --no-deps -e "$REPO"
else
  echo "[setup-sglang-env] installing $SGLANG_SPEC $SGLANG_EXTRAS and joulebench into $VENV"
  # One resolver run, so joulebench's light dependencies agree with SGLang's pins (torch==2.11.0,
  # transformers==5.12.1). The word splitting of SGLANG_EXTRAS is intended (a list of requirements).
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --extra-index-url "$TORCH_INDEX_URL" "$SGLANG_SPEC" $SGLANG_EXTRAS httpx -e "$REPO"
fi

# Import check without a GPU context: the package metadata and the joulebench backend; importing
# sglang.srt needs the CUDA libraries and is left to the first run.
"$PY" - <<'PYEOF'
import importlib.metadata as md
import joulebench.backends.sglang  # noqa: F401
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "missing"
print("[setup-sglang-env] ok: " + ", ".join(f"{n} {version(n)}" for n in
      ("sglang", "sglang-kernel", "flashinfer-python", "torch", "transformers")))
PYEOF
echo "[setup-sglang-env] done in $(( $(date +%s) - start )) s: $PY"
