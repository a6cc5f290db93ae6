#!/bin/bash
# Make the stack's one base image, debian:bookworm-slim, without Docker Hub: debootstrap a
# minimal Debian 12 from a Debian mirror and `docker import` it under that name. A Pi with
# internet may simply `docker pull debian:bookworm-slim` instead; every Dockerfile of the stack
# starts FROM that name.
#
#   sudo services/docker/make-base.sh [MIRROR]        # default http://deb.debian.org/debian
#
# RECORDER_BASE_TARBALL=FILE keeps the root filesystem as a tarball (made once, imported again
# on later runs: the tests cache it). Needs root (debootstrap) and the debootstrap package.
# RECORDER_BASE_ARCH=arm64 makes the base for another CPU than this machine's (an arm64 set of
# images built on amd64: qemu-user-static and binfmt-support installed, then
# DOCKER_DEFAULT_PLATFORM=linux/arm64 docker compose build; see docs/field-guide.md).
set -euo pipefail
mirror=${1:-http://deb.debian.org/debian}
tag=${RECORDER_BASE_IMAGE:-debian:bookworm-slim}
tarball=${RECORDER_BASE_TARBALL:-}
arch=${RECORDER_BASE_ARCH:-}

if [ -z "$tarball" ] || [ ! -s "$tarball" ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase ${arch:+--arch="$arch"} bookworm "$root" "$mirror" >&2
  # What the slim image leaves out: documentation, manuals, package lists, caches.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/*.log
  # Images keep no documentation (as debian:bookworm-slim's dpkg excludes do).
  cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$root/etc/apt/apt.conf.d/docker-no-recommends"
  out=${tarball:-$root.tar}
  tar -C "$root" --numeric-owner -cf "$out.part" .
  mv "$out.part" "$out"
  tarball=$out
fi
if [ -z "$arch" ]; then
  docker import --change 'CMD ["bash"]' "$tarball" "$tag" >/dev/null
else
  # `docker import` (Engine 20.10) labels every image with the daemon's own CPU: a foreign
  # base is made by a build FROM scratch, which records the platform asked for.
  ctx=$(mktemp -d)
  ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
  printf 'FROM scratch\nADD rootfs.tar /\nCMD ["bash"]\n' > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 docker build -q --platform "linux/$arch" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
fi
[ "$tarball" != "${RECORDER_BASE_TARBALL:-}" ] && rm -f "$tarball"
echo "$tag"
