#!/usr/bin/env bash
# Podman as a Docker-API engine for joulebench's container tests (and for hosts without Docker).
#
# Idempotent. Installs podman/runc/catatonit/debootstrap if missing (Debian/Ubuntu, as root),
# writes a containers.conf that works on hybrid-cgroup hosts, serves Podman's Docker-compatible
# API on a private unix socket (background, pid file) and imports a small local base image built
# with debootstrap (cached as a tarball), for hosts where no registry can be pulled from.
#
# Usage:  eval "$(scripts/podman-setup.sh)"     # exports DOCKER_HOST, CONTAINERS_CONF, JOULEBENCH_BASE_IMAGE,
#                                               # JOULEBENCH_CA_BUNDLE
#         scripts/podman-setup.sh --stop       # stop the API service
# Env:    JB_PODMAN_DIR (state folder, default <repo>/.ci-cache/podman)
#         JB_BASE_IMAGE (name of the local base image, default localhost/joulebench-base:bookworm)
#         JB_DEBIAN_MIRROR (default: the first deb.debian.org-style mirror apt uses, else deb.debian.org)
# All progress goes to stderr; stdout carries only the `export` lines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${JB_PODMAN_DIR:-$REPO/.ci-cache/podman}"
BASE_IMAGE="${JB_BASE_IMAGE:-localhost/joulebench-base:bookworm}"
SOCK="$STATE/podman.sock"
PIDFILE="$STATE/service.pid"
CONF="$STATE/containers.conf"
ROOTFS_TAR="$STATE/../base-rootfs-bookworm.tar"

log() { printf '[podman-setup] %s\n' "$*" >&2; }

mkdir -p "$STATE/root" "$STATE/runroot" "$STATE/tmp"
PODMAN=(podman --root "$STATE/root" --runroot "$STATE/runroot" --tmpdir "$STATE/tmp")
export CONTAINERS_CONF="$CONF"

if [[ "${1:-}" == "--stop" ]]; then
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")" && log "stopped service pid $(cat "$PIDFILE")"
  fi
  rm -f "$PIDFILE"
  exit 0
fi

# 1. packages
missing=()
for pkg in podman runc catatonit debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# 2. containers.conf: runc (crun refuses hybrid cgroups), cgroupfs, file events,
#    ulimits under the hard limit (no CAP_SYS_RESOURCE in many CI sandboxes).
cat > "$CONF.tmp" <<'CONFEOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONFEOF
mv "$CONF.tmp" "$CONF"

# 3. API service on a private socket
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && [[ -S "$SOCK" ]]; then
  log "service already running (pid $(cat "$PIDFILE"))"
else
  rm -f "$SOCK"
  nohup "${PODMAN[@]}" system service --time=0 "unix://$SOCK" >"$STATE/service.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 100); do
    [[ -S "$SOCK" ]] && break
    sleep 0.1
  done
  [[ -S "$SOCK" ]] || { log "service did not start; see $STATE/service.log"; exit 1; }
  log "service started (pid $(cat "$PIDFILE")) on $SOCK"
fi

# 4. local base image (no registry needed)
if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  log "base image $BASE_IMAGE present"
else
  bash "$REPO/scripts/base-rootfs.sh" "$ROOTFS_TAR" >/dev/null
  log "importing $ROOTFS_TAR as $BASE_IMAGE"
  "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >&2
fi

echo "export DOCKER_HOST=unix://$SOCK"
echo "export CONTAINERS_CONF=$CONF"
echo "export JOULEBENCH_BASE_IMAGE=$BASE_IMAGE"
# Image builds trust the host's CA bundle too (TLS-intercepting proxies; harmless elsewhere).
for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
  if [[ -s "$ca" ]]; then echo "export JOULEBENCH_CA_BUNDLE=$ca"; break; fi
done
