#!/bin/sh
# pip install with the build's extra CA bundle and local wheels, used by every engine Dockerfile.
#   /opt/jb-build/pip-install.sh [pip install arguments...]
#   JB_PIP_CMD=wheel /opt/jb-build/pip-install.sh [pip wheel arguments...]
# - docker/certs/*.crt (PEM; e.g. a corporate proxy's CA) are appended to pip's own CA bundle.
#   A CA certificate is public, not a secret; the combined bundle is deleted after each install.
# - docker/wheels/*.whl are offered to pip with --find-links (e.g. a local torch CPU wheel).
set -eu
PYTHON="${JB_PYTHON:-python3}"
CMD="${JB_PIP_CMD:-install}"
set -- "$CMD" --no-cache-dir --disable-pip-version-check --find-links /opt/jb-build/wheels "$@"
if ls /opt/jb-build/certs/*.crt >/dev/null 2>&1; then
  bundle="$(mktemp)"
  cat "$("$PYTHON" -c 'import pip._vendor.certifi as c; print(c.where())')" /opt/jb-build/certs/*.crt > "$bundle"
  PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle" "$PYTHON" -m pip "$@"
  rm -f "$bundle"
else
  "$PYTHON" -m pip "$@"
fi
