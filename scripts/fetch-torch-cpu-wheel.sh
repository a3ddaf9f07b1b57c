#!/usr/bin/env bash
# Put the torch CPU wheel that CPU engine images install into docker/wheels/ (gitignored), so
# image builds do not fetch PyPI's default multi-GB CUDA torch. Uses pip's own configuration
# (a local find-links folder or a mirror is honoured) plus the PyTorch CPU index.
# Usage: scripts/fetch-torch-cpu-wheel.sh [PYTHON]   (PYTHON: the pip to use, default python3)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:-python3}"
SPEC="${JOULEBENCH_TORCH_CPU_SPEC:-torch==2.13.0+cpu}"
mkdir -p "$REPO/docker/wheels"
name="${SPEC%%==*}"; version="${SPEC#*==}"
if ls "$REPO/docker/wheels/${name}-${version}-"*.whl >/dev/null 2>&1; then
  echo "[fetch-torch-cpu-wheel] $(ls "$REPO/docker/wheels/${name}-${version}-"*.whl) present" >&2
  exit 0
fi
# cp311 / manylinux_2_28: the python3 of Debian bookworm, the local base image.
args=(-m pip download --no-deps --only-binary=:all: --python-version 3.11 --implementation cp
      --platform manylinux_2_28_x86_64 -d "$REPO/docker/wheels")
# pip's configured sources first (fast when a local wheel folder has it), then the PyTorch CPU index.
"$PY" "${args[@]}" --retries 0 "$SPEC" >&2 2>/dev/null \
  || "$PY" "${args[@]}" --extra-index-url https://download.pytorch.org/whl/cpu "$SPEC" >&2
