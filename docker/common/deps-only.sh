#!/bin/sh
# Install a Python project's dependencies without the project: deps-only.sh DIR [extra requirements...]
# DIR holds pyproject.toml only; a stub package satisfies setuptools, then the project is removed again.
# This keeps the (large, slow) dependency layer independent of source edits.
set -eu
dir="$1"; shift
name="$("${JB_PYTHON:-python3}" - "$dir/pyproject.toml" <<'PY'
import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["name"])
PY
)"
mkdir -p "$dir/src/$name"
: > "$dir/src/$name/__init__.py"
[ -f "$dir/README.md" ] || : > "$dir/README.md"
sh /opt/jb-build/pip-install.sh "$@" "$dir"
"${JB_PYTHON:-python3}" -m pip uninstall -y --disable-pip-version-check "$name" >/dev/null
rm -rf "$dir"
