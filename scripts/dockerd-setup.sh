#!/usr/bin/env bash
# A private Docker Engine (Debian's docker.io) for joulebench's container tests and compose, next to
# (or instead of) Podman: both engines serve the Docker API, and they differ where it matters.
#
# Idempotent. Installs docker.io (with containerd and runc) and docker-compose (compose v1) if missing
# (Debian/Ubuntu, as root), starts dockerd in the background with a private data root, exec root,
# pid file and unix socket under one folder (no system service, no iptables, no default bridge:
# containers run with network none) and imports the local base image from the debootstrap rootfs
# tarball that podman-setup.sh uses (scripts/base-rootfs.sh; built once, cached).
#
# Usage:  eval "$(scripts/dockerd-setup.sh)"    # exports DOCKER_HOST (and JOULEBENCH_BASE_IMAGE)
#         scripts/dockerd-setup.sh --stop       # stop dockerd (its containerd goes with it)
# Env:    JB_DOCKERD_DIR (state folder, default <repo>/.ci-cache/dockerd)
#         JB_BASE_IMAGE (name of the local base image, default localhost/joulebench-base:bookworm)
# Progress goes to stderr; stdout carries only the `export` lines.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${JB_DOCKERD_DIR:-$REPO/.ci-cache/dockerd}"
BASE_IMAGE="${JB_BASE_IMAGE:-localhost/joulebench-base:bookworm}"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
ROOTFS_TAR="$REPO/.ci-cache/base-rootfs-bookworm.tar"
[[ -n "${JB_PODMAN_DIR:-}" ]] && ROOTFS_TAR="$JB_PODMAN_DIR/../base-rootfs-bookworm.tar"

log() { printf '[dockerd-setup] %s\n' "$*" >&2; }
running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

mkdir -p "$STATE"

if [[ "${1:-}" == "--stop" ]]; then
  if running; then
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    log "stopped dockerd pid $pid"
  fi
  rm -f "$PIDFILE" "$SOCK"
  exit 0
fi

# 1. packages
missing=()
for pkg in docker.io docker-compose; do
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
DOCKERD="$(command -v dockerd || echo /usr/sbin/dockerd)"
# The docker.io client of the same release (a newer `docker` elsewhere on PATH works too).
DOCKER=(/usr/bin/docker -H "unix://$SOCK")
[[ -x /usr/bin/docker ]] || DOCKER=(docker -H "unix://$SOCK")

# 2. dockerd on a private socket: no iptables, no bridge (CI sandboxes forbid both), cgroupfs,
#    a nofile limit under the hard limit (no CAP_SYS_RESOURCE).
if running && [[ -S "$SOCK" ]] && "${DOCKER[@]}" version >/dev/null 2>&1; then
  log "dockerd already running (pid $(cat "$PIDFILE"))"
else
  if running; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; sleep 1; fi
  rm -f "$SOCK" "$PIDFILE"
  mkdir -p "$STATE/data" "$STATE/exec"
  nohup "$DOCKERD" --data-root "$STATE/data" --exec-root "$STATE/exec" -H "unix://$SOCK" --pidfile "$PIDFILE" \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --exec-opt native.cgroupdriver=cgroupfs --default-ulimit nofile=20000:20000 \
    >"$STATE/dockerd.log" 2>&1 &
  bg=$!
  for _ in $(seq 1 300); do
    [[ -S "$SOCK" ]] && "${DOCKER[@]}" version >/dev/null 2>&1 && break
    kill -0 "$bg" 2>/dev/null || break
    sleep 0.1
  done
  if ! "${DOCKER[@]}" version >/dev/null 2>&1; then
    log "dockerd did not start; see $STATE/dockerd.log:"
    tail -n 20 "$STATE/dockerd.log" >&2 || true
    exit 1
  fi
  echo "$bg" > "$PIDFILE"
  log "dockerd started (pid $bg) on $SOCK"
fi

# 3. the local base image (no registry needed), the same rootfs as Podman's
if "${DOCKER[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE present"
else
  bash "$REPO/scripts/base-rootfs.sh" "$ROOTFS_TAR" >/dev/null
  log "importing $ROOTFS_TAR as $BASE_IMAGE"
  "${DOCKER[@]}" import --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE_IMAGE" >&2
fi

echo "export DOCKER_HOST=unix://$SOCK"
echo "export JOULEBENCH_BASE_IMAGE=$BASE_IMAGE"
