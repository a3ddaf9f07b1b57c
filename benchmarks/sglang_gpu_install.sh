#!/usr/bin/env bash
# Install SGLang on an offline GPU machine from the pieces benchmarks/sglang_gpu_pack.sh built, and
# make it joulebench's sglang engine environment.
#
#   bash benchmarks/sglang_gpu_install.sh PIECEDIR [TARGET] [ENVDIR]
#     PIECEDIR  the folder holding ssite.tar.zst.part-*, ssite.sha256 (and zstd, if the machine has none)
#     TARGET    where the packages go (default: /tmp/ssite)
#     ENVDIR    the engine environment to create (default: .venvs/sglang in the repository)
#   PYTHON=...  the interpreter to launch (default: the first working python3.12, python3)
#   JB_ZSTD=... a zstd binary (default: zstd on PATH, else PIECEDIR/zstd)
#   IMPORT_CHECK=0  skip importing SGLang's server modules at the end (the tests' stand-in pieces)
#
# The pieces go to the GPU machine one per transfer (each is under the transfer limit); collect them in
# one folder there first (benchmarks/gpu_proofs.sh's stash stage does). ssite.sha256 lists every
# piece: the install refuses to start while one it lists is missing, or when a piece it does not list
# is there (left from another build), and checks each before unpacking anything. ENVDIR/bin/python is a small launcher: the image's python3 with TARGET and
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
  listed=$(awk '{print $2}' "$PD/ssite.sha256" | sed 's/^\*//' | sort)
  here=$(cd "$PD" && ls ssite.tar.zst.part-* | sort)
  missing=$(comm -23 <(echo "$listed") <(echo "$here"))
  extra=$(comm -13 <(echo "$listed") <(echo "$here"))
  if [ -n "$missing" ]; then
    echo "$(echo "$here" | wc -l) of $(echo "$listed" | wc -l) pieces in $PD; missing: $(echo $missing):" \
         "bring them (one per transfer) before installing" >&2
    exit 1
  fi
  if [ -n "$extra" ]; then
    echo "pieces not listed in ssite.sha256 (from another build?): $(echo $extra): remove them" >&2
    exit 1
  fi
  ( cd "$PD" && sha256sum -c --quiet ssite.sha256 ) || { echo "a piece is damaged: send it again" >&2; exit 1; }
  echo "[sglang-install] $(echo "$listed" | wc -l) pieces checked against ssite.sha256"
else
  echo "[sglang-install] WARNING: no ssite.sha256 in $PD: the pieces are not checked" >&2
fi
ZSTD=${JB_ZSTD:-$(command -v zstd || echo "$PD/zstd")}
[ -x "$ZSTD" ] || { echo "no zstd binary ($ZSTD): put one on PATH, in $PD, or name it in JB_ZSTD" >&2; exit 1; }

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
if [ "${IMPORT_CHECK:-1}" != 0 ]; then
  # what the server imports at start: a package left out of the pieces shows here, not in the study
  t0=$(date +%s)
  "$ENVDIR/bin/python" -c "import sgl_kernel, flashinfer, sglang.launch_server, sglang.srt.entrypoints.http_server" \
    > "$TARGET.import-check.log" 2>&1 \
    || { tail -20 "$TARGET.import-check.log" >&2; echo "SGLang's server modules do not import (above)" >&2; exit 1; }
  echo "[sglang-install] SGLang's server modules import ($(( $(date +%s) - t0 )) s)"
fi
echo "[sglang-install] engine environment: $ENVDIR/bin/python"
echo "export JOULEBENCH_SGLANG_PYTHON=$ENVDIR/bin/python"
echo "export PYTHONPATH=$TARGET:$REPO/src   # to use it by hand instead"
