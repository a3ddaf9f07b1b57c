#!/usr/bin/env bash
# Install SGLang on an offline GPU machine from the pieces benchmarks/sglang_gpu_pack.sh built, and
# make it joulebench's sglang engine environment.
#
#   bash benchmarks/sglang_gpu_install.sh PIECEDIR [TARGET] [ENVDIR]
#     PIECEDIR  the folder holding ssite.tar.zst.part-*, ssite.sha256 (and zstd, if the machine has none)
#     TARGET    where the packages go (default: /tmp/ssite)
#     ENVDIR    the engine environment to create (default: .venvs/sglang in the repository)
#   PYTHON=...  the interpreter to launch (default: the first working python3.12, python3)
#
# The pieces go to the GPU machine one per transfer (each is under the transfer limit); collect them in
# one folder there first. ENVDIR/bin/python is a small launcher: the image's python3 with TARGET and
# joulebench's src/ on PYTHONPATH, so joulebench finds it like any engine environment (.venvs/sglang,
# or JOULEBENCH_SGLANG_PYTHON) and the SGLang server it starts inherits the same path.
set -euo pipefail
PD=${1:?piece dir}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET=${2:-/tmp/ssite}
ENVDIR=${3:-$REPO/.venvs/sglang}
PD=$(cd "$PD" && pwd)

ls "$PD"/ssite.tar.zst.part-* >/dev/null 2>&1 || { echo "no ssite.tar.zst.part-* in $PD" >&2; exit 1; }
if [ -f "$PD/ssite.sha256" ]; then
  ( cd "$PD" && sha256sum -c --quiet ssite.sha256 ) || { echo "a piece is missing or damaged: send it again" >&2; exit 1; }
fi
ZSTD=$(command -v zstd || echo "$PD/zstd")
[ -x "$ZSTD" ] || { echo "no zstd binary: copy one into $PD" >&2; exit 1; }

start=$(date +%s)
mkdir -p "$TARGET"
cat "$PD"/ssite.tar.zst.part-* | "$ZSTD" -d --long=27 -q | tar -x -C "$TARGET"
echo "[sglang-install] unpacked $(du -sh "$TARGET" | cut -f1) into $TARGET in $(( $(date +%s) - start )) s"

# The image's interpreter (PYTHON overrides): the first of python3.12, python3 that runs.
PY=""
for c in ${PYTHON:-} python3.12 python3; do
  if p=$(command -v "$c") && "$p" -c "import sys" >/dev/null 2>&1; then PY=$p; break; fi
done
[ -n "$PY" ] || { echo "no working python3 (set PYTHON)" >&2; exit 1; }
mkdir -p "$ENVDIR/bin"
cat > "$ENVDIR/bin/python" <<LAUNCH
#!/bin/sh
# joulebench's sglang engine environment: the image's Python with the SGLang pieces first on the path.
PYTHONPATH="$TARGET:$REPO/src\${PYTHONPATH:+:\$PYTHONPATH}"
export PYTHONPATH HF_HUB_OFFLINE=1 SGLANG_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
exec "$PY" "\$@"
LAUNCH
chmod +x "$ENVDIR/bin/python"

"$ENVDIR/bin/python" - <<'PYEOF'
import importlib.metadata as md
import joulebench.backends.sglang  # noqa: F401
import torch
names = ("sglang", "sglang-kernel", "flashinfer-python", "transformers", "tokenizers")
print("[sglang-install] " + ", ".join(f"{n} {md.version(n)}" for n in names) + f", torch {torch.__version__}")
PYEOF
echo "[sglang-install] engine environment: $ENVDIR/bin/python"
echo "export JOULEBENCH_SGLANG_PYTHON=$ENVDIR/bin/python"
echo "export PYTHONPATH=$TARGET:$REPO/src   # to use it by hand instead"
