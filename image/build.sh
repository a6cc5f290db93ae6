#!/bin/bash
# Build the flashable recorderpi image from the pinned Raspberry Pi OS Lite (arm64) release.
#
#   sudo image/build.sh [--base FILE.img.xz] [--out DIR] [--data-mb N] [--root-grow-mb N]
#   image/build.sh verify FILE.img.xz   check a downloaded base against the pinned sha256
#   image/build.sh pin                  fetch the published .sha256 and write it into
#                                       base-image.env (maintainers, when moving releases)
#   image/build.sh layout IMG_BYTES ROOT_END_SECTOR ROOT_GROW_MB DATA_MB
#                                       print the planned partition table (sfdisk script)
#
# The result, DIR/recorderpi-<version>.img.xz, has three partitions: the Pi OS boot (FAT) and
# root (grown by --root-grow-mb for the venv), and "recorder-data" (ext4, /srv/recorder), which
# grows to fill the card at first boot. Build host: Debian/Ubuntu with xz-utils, fdisk (sfdisk),
# e2fsprogs, util-linux (losetup), curl, and on x86 qemu-user-static + binfmt-support.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
# shellcheck source-path=SCRIPTDIR source=base-image.env
. "$HERE/base-image.env"

OUT=$SRC/image/out
BASE=""
DATA_MB=512
ROOT_GROW_MB=1024
SECTOR=512

log() { echo "build: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

verify() {
    local file=$1 have
    [[ $BASE_IMAGE_SHA256 =~ ^[0-9a-f]{64}$ ]] ||
        die "BASE_IMAGE_SHA256 in image/base-image.env is not set: run 'image/build.sh pin'"
    have=$(sha256sum "$file" | cut -d' ' -f1)
    [ "$have" = "$BASE_IMAGE_SHA256" ] ||
        die "$file: sha256 $have, expected $BASE_IMAGE_SHA256 (wrong or corrupted download)"
    log "$file matches the pinned sha256"
}

pin() {
    local sum
    sum=$(curl -fsSL "$BASE_IMAGE_URL.sha256" | cut -d' ' -f1)
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || die "no sha256 published at $BASE_IMAGE_URL.sha256"
    sed -i "s/^BASE_IMAGE_SHA256=.*/BASE_IMAGE_SHA256=$sum/" "$HERE/base-image.env"
    log "pinned $BASE_IMAGE_NAME to $sum"
}

# The sfdisk script for the grown image: p1 and p2 keep their starts, p2 grows by ROOT_GROW_MB,
# p3 (Linux) follows, aligned to 4 MiB, DATA_MB long.
layout() {
    local img_bytes=$1 root_end=$2 grow_mb=$3 data_mb=$4 align=$((4 * 1024 * 1024 / SECTOR))
    local root_new_end data_start data_sectors total
    root_new_end=$((root_end + grow_mb * 1024 * 1024 / SECTOR))
    data_start=$(((root_new_end / align + 1) * align))
    data_sectors=$((data_mb * 1024 * 1024 / SECTOR))
    total=$((data_start + data_sectors))
    printf 'image_bytes=%d\n' $((total * SECTOR > img_bytes ? total * SECTOR : img_bytes))
    printf 'p2_end=%d\n' "$root_new_end"
    printf 'p3=start=%d,size=%d,type=83\n' "$data_start" "$data_sectors"
}

build() {
    [ "$(id -u)" -eq 0 ] || die "run as root (loop devices, chroot)"
    local version img loop mnt cache
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n 1)
    mkdir -p "$OUT"
    if [ -z "$BASE" ]; then
        cache=$SRC/image/cache
        mkdir -p "$cache"
        BASE=$cache/$BASE_IMAGE_NAME
        [ -f "$BASE" ] || curl -fL --retry 3 -o "$BASE.part" "$BASE_IMAGE_URL"
        [ ! -f "$BASE.part" ] || mv "$BASE.part" "$BASE"
    fi
    verify "$BASE"
    if [ "$(uname -m)" != aarch64 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        die "arm64 chroot impossible here: apt-get install qemu-user-static binfmt-support"
    fi

    img=$OUT/recorderpi-$version.img
    log "unpacking $BASE"
    xz -dc "$BASE" >"$img"

    local root_start root_end plan new_bytes p2_end p3
    root_start=$(sfdisk -d "$img" | awk -F'[=,]' '/img2 :/ {gsub(/ /, "", $2); print $2}')
    root_end=$(sfdisk -d "$img" | awk -F'[=,]' '/img2 :/ {gsub(/ /, "", $2); gsub(/ /, "", $4); print $2 + $4}')
    [ -n "$root_start" ] || die "unexpected partition table in $BASE"
    plan=$(layout "$(stat -c %s "$img")" "$root_end" "$ROOT_GROW_MB" "$DATA_MB")
    new_bytes=$(echo "$plan" | sed -n 's/^image_bytes=//p')
    p2_end=$(echo "$plan" | sed -n 's/^p2_end=//p')
    p3=$(echo "$plan" | sed -n 's/^p3=//p')
    truncate -s "$new_bytes" "$img"
    # Same start, new size in sectors (a "+" size would mean "this size", not "this much more").
    echo "$root_start, $((p2_end - root_start))" | sfdisk --no-reread -N 2 "$img" >/dev/null
    echo "$p3" | sfdisk --no-reread --append "$img" >/dev/null

    loop=$(losetup --show -fP "$img")
    mnt=$(mktemp -d)
    cleanup() {
        umount -R "$mnt" 2>/dev/null || true
        losetup -d "$loop" 2>/dev/null || true
        rmdir "$mnt" 2>/dev/null || true
    }
    trap cleanup EXIT
    e2fsck -pf "${loop}p2" >/dev/null || true
    resize2fs "${loop}p2" >/dev/null
    mkfs.ext4 -q -L recorder-data "${loop}p3"
    mount "${loop}p2" "$mnt"
    mount "${loop}p1" "$mnt/boot/firmware"
    mkdir -p "$mnt/srv/recorder"
    mount "${loop}p3" "$mnt/srv/recorder"

    "$HERE/customize-rootfs.sh" "$mnt"

    cleanup
    trap - EXIT
    log "compressing"
    xz -T0 -f "$img"
    (cd "$OUT" && sha256sum "${img##*/}.xz" >"${img##*/}.xz.sha256")
    log "done: $img.xz ($(cut -d' ' -f1 "$img.xz.sha256"))"
}

main() {
    case ${1:-} in
        verify)
            [ $# -eq 2 ] || die "usage: $0 verify FILE.img.xz"
            verify "$2"
            return
            ;;
        pin)
            pin
            return
            ;;
        layout)
            [ $# -eq 5 ] || die "usage: $0 layout IMG_BYTES ROOT_END_SECTOR ROOT_GROW_MB DATA_MB"
            layout "$2" "$3" "$4" "$5"
            return
            ;;
    esac
    while [ $# -gt 0 ]; do
        case $1 in
            --base) BASE=$2; shift ;;
            --out) OUT=$2; shift ;;
            --data-mb) DATA_MB=$2; shift ;;
            --root-grow-mb) ROOT_GROW_MB=$2; shift ;;
            *) die "unknown option $1" ;;
        esac
        shift
    done
    build
}

main "$@"
