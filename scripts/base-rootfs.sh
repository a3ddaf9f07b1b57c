#!/usr/bin/env bash
# The local base image's root filesystem as a tarball: debootstrap bookworm (minbase + python3,
# venv, pip, CA certificates), for hosts where no registry can be pulled from. Cached: an existing
# tarball is kept. Used by podman-setup.sh (`podman import`) and dockerd-setup.sh (`docker import`).
#
# Usage:  scripts/base-rootfs.sh [TARBALL]     (default <repo>/.ci-cache/base-rootfs-bookworm.tar)
# Env:    JB_DEBIAN_MIRROR (default: the first deb.debian.org-style mirror apt uses, else deb.debian.org)
# Progress goes to stderr; stdout carries only the tarball's path.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS_TAR="${1:-$REPO/.ci-cache/base-rootfs-bookworm.tar}"
BASE_PACKAGES="python3,python3-venv,python3-pip,ca-certificates"

log() { printf '[base-rootfs] %s\n' "$*" >&2; }

if [[ ! -s "$ROOTFS_TAR" ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
      log "debootstrap missing (run as root, or: apt-get install debootstrap)"
      exit 1
    fi
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
      debootstrap >&2
  fi
  mirror="${JB_DEBIAN_MIRROR:-}"
  if [[ -z "$mirror" ]]; then
    mirror="$(grep -rhE '^(deb |URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
              | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | head -n1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
  fi
  mkdir -p "$(dirname "$ROOTFS_TAR")"
  rootfs="$(dirname "$ROOTFS_TAR")/rootfs.$$"
  rm -rf "$rootfs"
  log "debootstrap bookworm from $mirror (about a minute)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$ROOTFS_TAR.tmp" .
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$rootfs"
fi
echo "$ROOTFS_TAR"
