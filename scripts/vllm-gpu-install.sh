#!/usr/bin/env bash
# Install vLLM as joulebench's vLLM engine environment on an offline GPU machine, from the pieces that
# scripts/vllm-gpu-pack.sh built (vsite.tar.zst.part-aa, -ab, ...). No network needed.
#
#   bash scripts/vllm-gpu-install.sh PIECE... [--site DIR] [--venv DIR] [--python PY] [--no-check]
#
# What it does:
#   1. joins the pieces in name order, checks them against vsite.sha256 when that file lies beside them,
#      and unpacks them into the site folder (default: $TMPDIR/joulebench-vsite);
#   2. makes the engine environment (default .venvs/vllm, where joulebench looks for it): a venv over the
#      machine's own Python (--system-site-packages: its torch and CUDA libraries), with a .pth file that
#      adds the site folder and this repository's src/ (the worker imports joulebench from there) and,
#      when that Python is itself a venv, its site folders (where the image keeps torch);
#   3. imports vllm with it and prints the versions (skip with --no-check).
# Needs `zstd` on PATH or a zstd binary given as JB_ZSTD.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SITE="${TMPDIR:-/tmp}/joulebench-vsite"
VENV="$REPO/.venvs/vllm"
PY="${PYTHON:-python3}"
CHECK=1
PIECES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --site) SITE=$2; shift 2;;
    --venv) VENV=$2; shift 2;;
    --python) PY=$2; shift 2;;
    --no-check) CHECK=0; shift;;
    -h|--help) sed -n 2,14p "$0"; exit 0;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2;;
    *) PIECES+=("$1"); shift;;
  esac
done
[ ${#PIECES[@]} -gt 0 ] || { echo "give the pieces: vsite.tar.zst.part-aa ... (see --help)" >&2; exit 2; }
ZSTD="${JB_ZSTD:-$(command -v zstd || true)}"
[ -n "$ZSTD" ] && [ -x "$ZSTD" ] || { echo "no zstd: put it on PATH or set JB_ZSTD" >&2; exit 2; }
for p in "${PIECES[@]}"; do [ -f "$p" ] || { echo "piece not found: $p" >&2; exit 2; }; done
mapfile -t SORTED < <(for p in "${PIECES[@]}"; do echo "$(basename "$p") $p"; done | sort | cut -d' ' -f2-)

sums="$(dirname "${SORTED[0]}")/vsite.sha256"
if [ -f "$sums" ]; then
  for p in "${SORTED[@]}"; do
    want=$(awk -v n="$(basename "$p")" '$2==n{print $1}' "$sums")
    [ -z "$want" ] || [ "$(sha256sum "$p" | cut -d' ' -f1)" = "$want" ] \
      || { echo "checksum mismatch: $p (send it again)" >&2; exit 1; }
  done
fi

t0=$(date +%s)
rm -rf "$SITE"; mkdir -p "$SITE"
cat "${SORTED[@]}" | "$ZSTD" -q -d --long=27 | tar -x -C "$SITE"
echo "[vllm-gpu-install] unpacked ${#SORTED[@]} pieces into $SITE in $(( $(date +%s) - t0 )) s" >&2

SITE_ABS=$(cd "$SITE" && pwd)
if "$PY" -m venv --system-site-packages --without-pip --clear "$VENV" 2>/dev/null; then
  purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$purelib"
  printf '%s\n%s\n' "$SITE_ABS" "$REPO/src" > "$purelib/joulebench-engine.pth"
  # An image whose Python is itself a venv (e.g. /opt/torch/.venv): a venv made from it sees the *base*
  # interpreter's site-packages, not that venv's, so torch would be missing. Add the parent venv's site
  # folders after ours (a .pth line starting with `import` runs).
  "$PY" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    for d in site.getsitepackages():
        print(f"import site; site.addsitedir({d!r})")' >> "$purelib/joulebench-engine.pth"
else   # no venv module: a wrapper interpreter that puts the same folders first
  rm -rf "$VENV"; mkdir -p "$VENV/bin"
  printf '#!/bin/sh\nPYTHONPATH="%s:%s${PYTHONPATH:+:$PYTHONPATH}" exec "%s" "$@"\n' \
    "$SITE_ABS" "$REPO/src" "$(command -v "$PY")" > "$VENV/bin/python"
  chmod +x "$VENV/bin/python"
fi
echo "[vllm-gpu-install] engine environment: $VENV/bin/python" >&2

if [ "$CHECK" = 1 ]; then
  VLLM_NO_USAGE_STATS=1 "$VENV/bin/python" -c 'import torch, vllm, joulebench
print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.version.cuda, "joulebench", joulebench.__file__)'
fi
echo "$VENV/bin/python"
