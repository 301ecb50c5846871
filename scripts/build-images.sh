#!/usr/bin/env bash
# Builds Sluice's container images on this machine, without any registry:
#   1. sluice-base:bookworm   Debian 12 minbase from debootstrap (+ ca-certificates, curl),
#                             loaded with `docker import`; the runtime of the Sluice images.
#   2. sluice-infra:bookworm  the same root file system + redis-server + haproxy: the compose
#                             file's Redis and load balancer on this machine.
#   3. release binaries compiled on the host (cargo build --release, the workspace's target/)
#   4. sluice/gateway, sluice/sim and (once crates/sidecar exists) sluice/sidecar, from the
#      Dockerfile's *-prebuilt targets on sluice-base, with the host binaries copied in.
# Steps 1-2 are skipped when the tags already exist (REBUILD_BASE=1 forces them).
# Elsewhere, with a registry, build the usual way instead: `docker compose build`, or
# `docker build --target gateway -t sluice/gateway .` (compiles inside ${RUST_IMAGE}).
#
# Environment: SLUICE_TAG (default local), SLUICE_BASE_IMAGE, SLUICE_INFRA_IMAGE,
# DEBIAN_MIRROR (default http://deb.debian.org/debian), REBUILD_BASE=1, SKIP_CARGO=1.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${SLUICE_TAG:-local}
BASE_IMAGE=${SLUICE_BASE_IMAGE:-sluice-base:bookworm}
INFRA_IMAGE=${SLUICE_INFRA_IMAGE:-sluice-infra:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PATH_IN_IMAGE=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Temporary directories, removed on exit whatever happens.
TEMP_DIRS=()
cleanup() {
  if mountpoint -q "${ROOTFS:-/nonexistent}/proc" 2>/dev/null; then as_root umount "$ROOTFS/proc"; fi
  if [ ${#TEMP_DIRS[@]} -gt 0 ]; then as_root rm -rf "${TEMP_DIRS[@]}"; fi
}
trap cleanup EXIT
say() { echo "==> $*"; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The classic builder needs no buildx; BuildKit is used when the buildx plugin is there.
if docker buildx version >/dev/null 2>&1; then BUILDKIT=1; else BUILDKIT=0; fi

# Removes what a root file system does not need at run time (docs, man pages, caches).
slim_rootfs() {
  local root=$1
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/log/*.log "$root"/var/cache/debconf/*-old "$root"/tmp/* 2>/dev/null || true
  as_root find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
    -exec rm -rf {} + 2>/dev/null || true
}

import_rootfs() { # import_rootfs DIR TAG [CMD-JSON]
  as_root tar --numeric-owner -C "$1" -c . | docker import \
    --change "ENV PATH=$PATH_IN_IMAGE" --change "CMD ${3:-[\"bash\"]}" - "$2" >/dev/null
}

build_bases() {
  if have_image "$BASE_IMAGE" && have_image "$INFRA_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    say "base images $BASE_IMAGE and $INFRA_IMAGE cached"
    return
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local start=$SECONDS root
  root=$(mktemp -d /var/tmp/sluice-rootfs.XXXXXX)
  ROOTFS=$root
  TEMP_DIRS+=("$root" "$root.log")
  say "debootstrap bookworm (minbase) into $root"
  as_root debootstrap --variant=minbase --include=ca-certificates,curl bookworm "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
  # Services must not start inside the chroot; apt must not keep what it downloads.
  printf '#!/bin/sh\nexit 101\n' | as_root tee "$root/usr/sbin/policy-rc.d" >/dev/null
  as_root chmod +x "$root/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    | as_root tee "$root/etc/apt/apt.conf.d/90sluice" >/dev/null
  as_root rm -rf "$root/var/cache/apt/archives/"*.deb
  local lists_backup
  lists_backup=$(mktemp -d /var/tmp/sluice-lists.XXXXXX)
  TEMP_DIRS+=("$lists_backup")
  as_root cp -a "$root/var/lib/apt/lists/." "$lists_backup/"
  slim_rootfs "$root"
  say "docker import $BASE_IMAGE"
  import_rootfs "$root" "$BASE_IMAGE"

  say "adding redis-server and haproxy for $INFRA_IMAGE"
  as_root cp -a "$lists_backup/." "$root/var/lib/apt/lists/"
  as_root mount -t proc proc "$root/proc"
  DEBIAN_FRONTEND=noninteractive as_root chroot "$root" apt-get install -y -qq redis-server haproxy \
    >"$root.log" 2>&1 || { tail -20 "$root.log"; echo "apt-get install in the chroot failed" >&2; exit 1; }
  as_root umount "$root/proc"
  slim_rootfs "$root"
  say "docker import $INFRA_IMAGE"
  import_rootfs "$root" "$INFRA_IMAGE"
  say "base images built in $((SECONDS - start)) s"
}

build_binaries() {
  local pkgs=(-p sluice-gateway -p sluice-sim)
  [ -d crates/sidecar ] && pkgs+=(-p sluice-sidecar)
  if [ "${SKIP_CARGO:-0}" = 1 ]; then
    say "SKIP_CARGO=1: using the binaries already in target/release"
  else
    say "cargo build --release ${pkgs[*]}"
    cargo build --release --locked "${pkgs[@]}"
  fi
}

build_images() {
  local ctx bins=(gateway sim) name
  [ -d crates/sidecar ] && bins+=(sidecar)
  ctx=$(mktemp -d /var/tmp/sluice-ctx.XXXXXX)
  TEMP_DIRS+=("$ctx")
  mkdir -p "$ctx/bin"
  for name in "${bins[@]}"; do
    # Debug line tables stay on the host; symbols stay in the binary for backtraces.
    objcopy --strip-debug "target/release/sluice-$name" "$ctx/bin/sluice-$name" 2>/dev/null \
      || cp "target/release/sluice-$name" "$ctx/bin/sluice-$name"
  done
  for name in "${bins[@]}"; do
    local previous
    previous=$(docker image inspect --format '{{.Id}}' "sluice/$name:$TAG" 2>/dev/null || true)
    say "docker build sluice/$name:$TAG (target $name-prebuilt on $BASE_IMAGE)"
    # (The classic builder's deprecation notice is dropped; real errors still show.)
    DOCKER_BUILDKIT=$BUILDKIT docker build -q -f Dockerfile --target "$name-prebuilt" \
      --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" -t "sluice/$name:$TAG" "$ctx" 2>&1 >/dev/null \
      | { grep -vE 'DEPRECATED|BuildKit is currently disabled|environment-variable|^\s*$' || true; }
    # The image this tag replaced, if nothing else uses it (no disk growth per run).
    if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "sluice/$name:$TAG")" ]; then
      docker image rm "$previous" >/dev/null 2>&1 || true
    fi
  done
}

build_bases
build_binaries
build_images
say "images: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(sluice/|sluice-)' | tr '\n' ' ')"
