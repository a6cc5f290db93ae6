#!/bin/bash
# Carry the stack's images to Pis that cannot build them (no internet, or a slow one): build
# once where the connection is good, save every image into one archive with its sha256
# beside it, copy both (USB stick, the LAN), load them on each Pi.
#
#   services/docker/carry.sh save [ARCHIVE] [IMAGE...]   # default: every image compose.yaml names
#   services/docker/carry.sh load ARCHIVE
#
# save writes ARCHIVE (default recorderpi-images-<tag>-<arch>.tar in the current directory)
# and ARCHIVE.sha256 (sha256sum's format: `sha256sum -c` checks it by hand too); nothing is
# visible under either name until it is complete. load refuses, with one line and exit 1, an
# archive whose sha256 differs from ARCHIVE.sha256 (a corrupt or half-copied file) or that has
# no ARCHIVE.sha256, and images built for another CPU (an amd64 archive on a Pi: build with
# `--platform linux/arm64`, see docs/field-guide.md). Exit 2: usage.
# The docker CLI in PATH talks to the daemon DOCKER_HOST names (as `docker` itself does).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

die() { echo "carry: $*" >&2; exit "${2:-1}"; }
usage() { die "usage: carry.sh save [ARCHIVE] [IMAGE...] | carry.sh load ARCHIVE" 2; }

# The CPU the daemon runs containers for, in Docker's words (amd64, arm64).
daemon_arch() {
  case "$(docker version --format '{{.Server.Arch}}')" in
    x86_64) echo amd64 ;; aarch64) echo arm64 ;; *) docker version --format '{{.Server.Arch}}' ;;
  esac
}

stack_images() {
  docker compose --project-directory "$here/.." -f "$here/../compose.yaml" config --images \
    | sort -u
}

save() {
  local archive=${1:-} images=()
  [ "$#" -eq 0 ] || shift
  if [ "$#" -gt 0 ]; then
    images=("$@")
  else
    mapfile -t images < <(stack_images)
    [ "${#images[@]}" -gt 0 ] || die "compose.yaml names no image (is the compose plugin installed?)"
  fi
  local img arch=""
  for img in "${images[@]}"; do
    local a
    a=$(docker image inspect --format '{{.Architecture}}' "$img" 2>/dev/null) \
      || die "$img: no such image here: build it first (cd services && docker compose build)"
    [ -z "$arch" ] || [ "$arch" = "$a" ] || die "$img is $a, the others $arch: one archive per CPU"
    arch=$a
  done
  if [ -z "$archive" ]; then
    local tag
    tag=$(printf '%s\n' "${images[@]}" | sed -n 's/^recorderpi:\(.*\)$/\1/p' | head -n1)
    archive=recorderpi-images-${tag:-images}-$arch.tar
  fi
  local dir base
  dir=$(cd "$(dirname "$archive")" && pwd) || die "$(dirname "$archive"): no such directory"
  base=$(basename "$archive")
  rm -f "$dir/$base.part" "$dir/$base.sha256.part"
  docker save -o "$dir/$base.part" "${images[@]}"
  (cd "$dir" && sha256sum "$base.part" | sed 's/\.part$//' > "$base.sha256.part")
  sync "$dir/$base.part" "$dir/$base.sha256.part"
  mv -f "$dir/$base.part" "$dir/$base"
  mv -f "$dir/$base.sha256.part" "$dir/$base.sha256"
  sync "$dir"
  echo "carry: saved ${#images[@]} images ($arch) to $dir/$base ($(du -h "$dir/$base" | cut -f1)), sha256 in $base.sha256"
}

load() {
  [ "$#" -eq 1 ] || usage
  local archive=$1
  [ -f "$archive" ] || die "$archive: no such file"
  [ -s "$archive.sha256" ] || die "$archive.sha256 missing: copy it beside the archive (it proves the copy is whole)"
  local want got
  want=$(awk 'NR == 1 { print $1 }' "$archive.sha256")
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  [ "$want" = "$got" ] \
    || die "$archive: sha256 differs from $archive.sha256 (a corrupt or incomplete copy): copy it again"
  local out loaded=() line
  out=$(docker load -i "$archive") || die "$archive: docker load failed"
  while IFS= read -r line; do
    case "$line" in "Loaded image: "*) loaded+=("${line#Loaded image: }") ;; esac
  done <<< "$out"
  local arch img a
  arch=$(daemon_arch)
  for img in "${loaded[@]}"; do
    a=$(docker image inspect --format '{{.Architecture}}' "$img")
    [ "$a" = "$arch" ] \
      || die "$img is built for $a, this machine runs $arch: build the images with --platform linux/$arch"
  done
  echo "carry: loaded ${#loaded[@]} images from $archive: ${loaded[*]}"
}

[ "$#" -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
  save) save "$@" ;;
  load) load "$@" ;;
  *) usage ;;
esac
