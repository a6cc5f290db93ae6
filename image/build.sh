#!/bin/bash
# Build the flashable recorderpi image from Debian 12 packages alone (no download but the Debian
# mirror and PyPI), the way Debian's own Raspberry Pi images are made.
#
#   sudo image/build.sh [--arch arm64|amd64] [--out DIR] [--cache DIR] [--mirror URL]
#                       [--data-mb N] [--no-compress] [--update-lock]
#   image/build.sh layout ROOT_MB DATA_MB   print the partition table (sfdisk script)
#   image/build.sh check-lock LOCK LIST     compare a package list with a lock (exit 1, the diff)
#
# Steps: debootstrap (an arm64 root on an x86 host runs through qemu-user-static's binfmt
# handler), the kernel and firmware packages, every package at the exact version pinned in
# image/packages-<arch>.lock (and the venv's Python packages in image/python-<arch>.lock), then
# image/customize-rootfs.sh (services/install.sh in the chroot), then three partitions made
# from the tree without mounting anything: 1 RASPIFIRM (FAT: Pi firmware, kernel, config.txt,
# cmdline.txt), 2 RASPIROOT (ext4, the root), 3 recorder-data (ext4, /srv/recorder; grows to
# fill the card at first boot).
#
# Output in DIR (default image/out): recorderpi-<version>-<arch>.img[.xz], its .sha256, a
# .manifest (every Debian and Python package, with its version) and, for booting it under
# emulation, the kernel and initrd (-vmlinuz, -initrd.img).
#
# The lock: a build installs the locked versions and then refuses to finish if the root differs
# from the lock in any package (added, missing, other version), so two builds of one commit
# hold the same software. --update-lock writes the locks from what the mirror has today
# (maintainers, when moving to a Debian point release; commit the result).
#
# --cache DIR keeps the debootstrap downloads and the packaged base root (keyed by the lock and
# this recipe) between builds: a build whose lock did not change redoes only the appliance.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
# shellcheck source-path=SCRIPTDIR source=base-image.env
. "$HERE/base-image.env"

ARCH=arm64
OUT=$SRC/image/out
CACHE=""
MIRROR=${RECORDERPI_MIRROR:-$DEBIAN_MIRROR}
DATA_MB=512
BOOT_MB=256
COMPRESS=1
UPDATE_LOCK=0
SECTOR=512

log() { echo "build: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# The partition table, as an sfdisk script: 4 MiB-aligned FAT boot, root, data, in that order
# (growdata needs the data partition last).
layout() {
    local root_mb=$1 data_mb=$2 mib=$((1024 * 1024 / SECTOR))
    local boot_start=$((4 * mib)) boot_size=$((BOOT_MB * mib))
    local root_start=$((boot_start + boot_size)) root_size=$((root_mb * mib))
    local data_start=$((root_start + root_size)) data_size=$((data_mb * mib))
    printf 'label: dos\nlabel-id: 0x52504931\nunit: sectors\n\n'
    printf 'start=%d, size=%d, type=c, bootable\n' "$boot_start" "$boot_size"
    printf 'start=%d, size=%d, type=83\n' "$root_start" "$root_size"
    printf 'start=%d, size=%d, type=83\n' "$data_start" "$data_size"
}

# Compare "name version" lines with a lock; print the differences, fail when there are any.
check_lock() {
    local lock=$1 list=$2
    if diff -u --label "locked ($lock)" --label "built" <(grep -v '^#' "$lock" | LC_ALL=C sort) \
        <(LC_ALL=C sort "$list") >&2; then
        return 0
    fi
    return 1
}

need_tools() {
    local t missing=()
    for t in debootstrap mkfs.ext4 mkfs.vfat mcopy sfdisk xz sha256sum; do
        command -v "$t" >/dev/null || missing+=("$t")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing ${missing[*]}: apt-get install debootstrap e2fsprogs dosfstools mtools fdisk xz-utils"
}

# A foreign root (arm64 on x86) runs its package scripts through qemu-user-static's binfmt
# handler; make sure it is registered (binfmt_misc mounted, handler enabled).
need_binfmt() {
    local host qarch
    host=$(dpkg --print-architecture)
    [ "$host" != "$ARCH" ] || return 0
    case $ARCH in arm64) qarch=aarch64 ;; amd64) qarch=x86_64 ;; *) qarch=$ARCH ;; esac
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qarch" ] && command -v update-binfmts >/dev/null; then
        update-binfmts --enable "qemu-$qarch" >/dev/null 2>&1 || true
    fi
    grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/qemu-$qarch" 2>/dev/null ||
        die "cannot run $ARCH programs here: apt-get install qemu-user-static binfmt-support"
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

# proc and a policy that forbids service starts while packages install; undone by unmount_root.
mount_root() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    mountpoint -q "$ROOT/dev/pts" || mount -t devpts devpts "$ROOT/dev/pts" 2>/dev/null || true
    # apt's downloads kept on the host between builds (--cache).
    if [ -n "$CACHE" ] && ! mountpoint -q "$ROOT/var/cache/apt/archives"; then
        mkdir -p "$CACHE/apt-$ARCH/partial" "$ROOT/var/cache/apt/archives"
        mount --bind "$CACHE/apt-$ARCH" "$ROOT/var/cache/apt/archives"
    fi
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    rm -f "$ROOT/etc/resolv.conf"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

unmount_root() {
    local m
    [ -n "${ROOT:-}" ] && [ -d "$ROOT" ] || return 0
    for m in var/cache/apt/archives dev/pts dev sys proc; do
        umount -l "$ROOT/$m" 2>/dev/null || true
    done
    rm -f "$ROOT/usr/sbin/policy-rc.d"
}

write_sources() {
    local sec=$DEBIAN_SECURITY_MIRROR
    [ "$MIRROR" = "$DEBIAN_MIRROR" ] || sec=${RECORDERPI_SECURITY_MIRROR:-$sec}
    rm -f "$ROOT/etc/apt/sources.list"
    cat >"$ROOT/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: ${DEBIAN_COMPONENTS//,/ }
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $sec
Suites: $DEBIAN_SUITE-security
Components: ${DEBIAN_COMPONENTS//,/ }
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

package_list() {
    # shellcheck disable=SC2016  # dpkg-query's own format, not the shell's
    in_root dpkg-query -W -f='${binary:Package} ${Version}\n' | sed "s/:$ARCH / /" | LC_ALL=C sort
}

# debootstrap + every package at its locked version (or today's, without a lock).
make_base() {
    local lock=$1 kernel_var="KERNEL_PACKAGES_$ARCH" include
    include=$(echo "$BASE_PACKAGES" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
    local dbargs=(--arch="$ARCH" --variant=minbase --components="$DEBIAN_COMPONENTS"
        --include="$include")
    if [ -n "$CACHE" ]; then
        mkdir -p "$CACHE/debs-$ARCH"
        dbargs+=(--cache-dir="$CACHE/debs-$ARCH")
    fi
    log "debootstrap $DEBIAN_SUITE $ARCH from $MIRROR"
    debootstrap "${dbargs[@]}" "$DEBIAN_SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $(tail -n 5 "$WORK/debootstrap.log")"
    write_sources
    mount_root
    # No initramfs for every kernel step: once, at the end (it is slow under emulation).
    in_root apt-get update -qq
    local wanted=()
    if [ -f "$lock" ] && [ "$UPDATE_LOCK" -eq 0 ]; then
        mapfile -t wanted < <(grep -v '^#' "$lock" | awk '{print $1 "=" $2}')
        log "installing ${#wanted[@]} locked packages"
        in_root apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "${wanted[@]}" >"$WORK/apt.log" 2>&1 ||
            die "the mirror cannot give the locked versions ($(grep -m3 -E '^E:' "$WORK/apt.log" |
                tr '\n' ' ')); if Debian moved on, run build.sh --update-lock and commit the lock"
    else
        read -r -a wanted <<<"${!kernel_var} $(echo "$APPLIANCE_PACKAGES" | tr '\n' ' ')"
        log "installing ${wanted[*]} (no lock: today's versions)"
        in_root apt-get -y -qq upgrade >"$WORK/apt.log" 2>&1
        in_root apt-get install -y -qq --no-install-recommends "${wanted[@]}" >>"$WORK/apt.log" 2>&1 ||
            die "apt-get install failed: $(tail -n 5 "$WORK/apt.log")"
    fi
    unmount_root
    rm -f "$ROOT"/var/cache/apt/archives/*.deb
}

# The parts of the root that make it a bootable appliance rather than a chroot: before the
# appliance install (customize-rootfs.sh adds its own fstab lines to these).
image_prepare() {
    cat >"$ROOT/etc/fstab" <<'EOF'
# recorderpi image: labels, not device names, so the card boots in any reader or slot.
LABEL=RASPIROOT / ext4 rw,noatime,errors=remount-ro 0 1
LABEL=RASPIFIRM /boot/firmware vfat rw,noatime,umask=0077,nofail 0 2
EOF
    mkdir -p "$ROOT/boot/firmware"
    echo recorderpi >"$ROOT/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\trecorderpi\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$ROOT/etc/hosts"
    # Wired network by DHCP (systemd-networkd): the Pi's Ethernet and any emulator's NIC.
    mkdir -p "$ROOT/etc/systemd/network"
    printf '[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n' \
        >"$ROOT/etc/systemd/network/20-wired.network"
    in_root systemctl enable --quiet systemd-networkd.service systemd-resolved.service
    if [ "$ARCH" = arm64 ]; then
        # The Pi's firmware boots from RASPIFIRM; raspi-firmware's hook writes cmdline.txt.
        printf '%s\n' '# recorderpi: the root by label, the serial console on the GPIO header.' \
            'ROOTPART=LABEL=RASPIROOT' 'CONSOLES="ttyS1,115200 tty0"' 'KERNEL_ARCH="arm64"' \
            >"$ROOT/etc/default/raspi-firmware"
    fi
}

# After the install: initramfs, firmware partition, per-card identity left for the first boot.
image_finish() {
    local version=$1 kver
    # Made on each card's first boot, never shared: the machine id (and so systemd's first boot).
    : >"$ROOT/etc/machine-id"
    rm -f "$ROOT/var/lib/dbus/machine-id"
    in_root passwd -l root >/dev/null
    mount_root
    # The kernel's package made the initramfs (Debian's MODULES=most: the drivers a Pi and a
    # virtual machine need); on arm64 raspi-firmware's hook copies kernel, initrd and device
    # trees onto the FAT partition, again now that /etc/default/raspi-firmware names the root.
    kver=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' |
        sort -V | tail -n 1)
    [ -n "$kver" ] || die "no kernel in the root"
    [ -f "$ROOT/boot/initrd.img-$kver" ] || die "no initramfs for kernel $kver"
    if [ "$ARCH" = arm64 ]; then
        in_root /etc/kernel/postinst.d/z50-raspi-firmware "$kver" >"$WORK/raspi.log" 2>&1 ||
            die "raspi-firmware hook failed: $(tail -n 5 "$WORK/raspi.log")"
        [ -f "$ROOT/boot/firmware/cmdline.txt" ] || die "raspi-firmware wrote no cmdline.txt"
    fi
    unmount_root
    KVER=$kver
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
        "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "${ROOT:?}"/tmp/* \
        "$ROOT"/root/.cache
    # systemd-resolved owns name resolution on the device.
    rm -f "$ROOT/etc/resolv.conf"
    ln -s ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
    log "image root ready (recorderpi $version, kernel $kver)"
}

# The three file systems, each made from a directory (no loop device, no mount), then copied
# into the disk image at the offsets of the partition table.
assemble() {
    local img=$1 root_mb part="$WORK/parts" used
    mkdir -p "$part/boot" "$part/data"
    # Move the contents of the two other partitions out of the root tree.
    find "$ROOT/boot/firmware" -mindepth 1 -maxdepth 1 -exec mv -t "$part/boot" {} +
    find "$ROOT/srv/recorder" -mindepth 1 -maxdepth 1 -exec mv -t "$part/data" {} +
    used=$(du -sxm "$ROOT" | cut -f1)
    root_mb=$(((used * 13 / 10 + 300 + 63) / 64 * 64))
    layout "$root_mb" "$DATA_MB" >"$WORK/table"
    local total=$(((4 + BOOT_MB + root_mb + DATA_MB + 1) * 1024 * 1024))
    rm -f "$img"
    truncate -s "$total" "$img"
    sfdisk --quiet "$img" <"$WORK/table"
    local t=${SOURCE_DATE_EPOCH}
    export E2FSPROGS_FAKE_TIME=$t
    # Fixed identifiers: the same inputs give the same file systems.
    mkfs.vfat -C -F 32 -n RASPIFIRM -i 52504931 "$part/boot.img" $((BOOT_MB * 1024)) >/dev/null
    if [ -n "$(ls -A "$part/boot")" ]; then
        mcopy -s -m -i "$part/boot.img" "$part/boot"/* ::/
    fi
    truncate -s "${root_mb}M" "$part/root.img"
    truncate -s "${DATA_MB}M" "$part/data.img"
    mkfs.ext4 -q -F -L RASPIROOT -U 6d9f3a52-7265-636f-7264-6572726f6f74 \
        -E hash_seed=6d9f3a52-7265-636f-7264-6572726f6f74,root_owner=0:0 -d "$ROOT" \
        "$part/root.img" "${root_mb}M"
    mkfs.ext4 -q -F -L recorder-data -U 6d9f3a52-7265-636f-7264-646174613030 \
        -E hash_seed=6d9f3a52-7265-636f-7264-646174613030 -d "$part/data" \
        "$part/data.img" "${DATA_MB}M"
    unset E2FSPROGS_FAKE_TIME
    local starts
    mapfile -t starts < <(grep -o 'start=[0-9]*' "$WORK/table" | cut -d= -f2)
    dd if="$part/boot.img" of="$img" bs=1M seek=$((starts[0] * SECTOR / 1048576)) conv=notrunc,sparse status=none
    dd if="$part/root.img" of="$img" bs=1M seek=$((starts[1] * SECTOR / 1048576)) conv=notrunc,sparse status=none
    dd if="$part/data.img" of="$img" bs=1M seek=$((starts[2] * SECTOR / 1048576)) conv=notrunc,sparse status=none
    # Put the partitions' contents back: the tree stays a faithful copy of the image (cache).
    find "$part/boot" -mindepth 1 -maxdepth 1 -exec mv -t "$ROOT/boot/firmware" {} +
    find "$part/data" -mindepth 1 -maxdepth 1 -exec mv -t "$ROOT/srv/recorder" {} +
    rm -rf "$part"
}

# The base root (Debian packages) is cached by the lock and the recipe that makes it (those
# functions, not the whole script: a change to the later steps reuses it).
base_key() {
    { declare -f make_base write_sources mount_root unmount_root in_root package_list
        cat "$HERE/base-image.env" "$1" 2>/dev/null || true; } | sha256sum | cut -c1-16
}

build() {
    [ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot)"
    need_tools
    need_binfmt
    local version lock pylock key base_tar name
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n 1)
    lock=$HERE/packages-$ARCH.lock
    pylock=$HERE/python-$ARCH.lock
    : "${SOURCE_DATE_EPOCH:=$(git -C "$SRC" log -1 --format=%ct 2>/dev/null || date +%s)}"
    export SOURCE_DATE_EPOCH
    mkdir -p "$OUT"
    WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/recorderpi-image.XXXXXX")
    ROOT=$WORK/root
    trap 'unmount_root; rm -rf "$WORK"' EXIT

    key=$(base_key "$lock")
    base_tar=""
    [ -z "$CACHE" ] || [ "$UPDATE_LOCK" -eq 1 ] || base_tar=$CACHE/base-$ARCH-$key.tar
    if [ -n "$base_tar" ] && [ -f "$base_tar" ]; then
        log "base root from the cache ($base_tar)"
        mkdir -p "$ROOT"
        tar -C "$ROOT" --numeric-owner -xpf "$base_tar"
    else
        make_base "$lock"
        if [ -n "$base_tar" ]; then
            rm -f "$CACHE"/base-"$ARCH"-*.tar
            tar -C "$ROOT" --numeric-owner -cpf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
        fi
    fi

    # The appliance, with the venv's Python packages pinned (pip reads /etc/pip.conf).
    if [ -f "$pylock" ] && [ "$UPDATE_LOCK" -eq 0 ]; then
        install -D -m 0644 "$pylock" "$ROOT/etc/recorderpi/python.lock"
        printf '[global]\nconstraint = /etc/recorderpi/python.lock\n' >"$ROOT/etc/pip.conf"
    fi
    image_prepare
    "$HERE/customize-rootfs.sh" "$ROOT" >"$WORK/customize.log" 2>&1 ||
        die "customize-rootfs.sh failed: $(tail -n 15 "$WORK/customize.log")"
    rm -f "$ROOT/etc/pip.conf"
    image_finish "$version"

    # The lock: what was built is what is locked, or the build fails.
    package_list >"$WORK/packages"
    in_root /opt/recorderpi/venv/bin/pip freeze --exclude-editable --all 2>/dev/null |
        grep -v -i -E '^(recorderpi|pip|setuptools|wheel)[= @]' | LC_ALL=C sort >"$WORK/python"
    if [ "$UPDATE_LOCK" -eq 1 ] || [ ! -f "$lock" ]; then
        { echo "# Debian packages of the recorderpi $ARCH image (image/build.sh --update-lock)"
            cat "$WORK/packages"; } >"$lock"
        { echo "# Python packages of the recorderpi venv (image/build.sh --update-lock)"
            cat "$WORK/python"; } >"$pylock"
        log "wrote $lock ($(wc -l <"$WORK/packages") packages) and $pylock"
    else
        check_lock "$lock" "$WORK/packages" ||
            die "the image's Debian packages differ from $lock (above); run build.sh --update-lock"
        check_lock "$pylock" "$WORK/python" ||
            die "the venv's Python packages differ from $pylock (above); run build.sh --update-lock"
    fi

    name=recorderpi-$version-$ARCH
    { echo "# $name: Debian packages"; cat "$WORK/packages"
        echo "# Python packages (/opt/recorderpi/venv)"; cat "$WORK/python"; } >"$OUT/$name.manifest"
    cp "$ROOT/boot/vmlinuz-$KVER" "$OUT/$name-vmlinuz"
    cp "$ROOT/boot/initrd.img-$KVER" "$OUT/$name-initrd.img"
    assemble "$OUT/$name.img"
    local final=$name.img
    if [ "$COMPRESS" -eq 1 ]; then
        log "compressing"
        xz -T0 -f "$OUT/$name.img"
        final=$name.img.xz
    fi
    (cd "$OUT" && sha256sum "$final" >"$final.sha256")
    log "done: $OUT/$final ($(cut -d' ' -f1 "$OUT/$final.sha256"))"
}

main() {
    case ${1:-} in
        layout)
            [ $# -eq 3 ] || die "usage: $0 layout ROOT_MB DATA_MB"
            layout "$2" "$3"
            return
            ;;
        base-key)
            [ $# -eq 2 ] || die "usage: $0 base-key arm64|amd64"
            base_key "$HERE/packages-$2.lock"
            return
            ;;
        check-lock)
            [ $# -eq 3 ] || die "usage: $0 check-lock LOCK LIST"
            check_lock "$2" "$3"
            return
            ;;
    esac
    while [ $# -gt 0 ]; do
        case $1 in
            --arch)
                [ $# -ge 2 ] || die "--arch needs arm64 or amd64"
                ARCH=$2
                shift
                ;;
            --out) OUT=$2; shift ;;
            --cache) CACHE=$2; shift ;;
            --mirror) MIRROR=$2; shift ;;
            --data-mb) DATA_MB=$2; shift ;;
            --no-compress) COMPRESS=0 ;;
            --update-lock) UPDATE_LOCK=1 ;;
            *) die "unknown option $1" ;;
        esac
        shift
    done
    case $ARCH in arm64 | amd64) ;; *) die "--arch: arm64 (the Pi) or amd64, not $ARCH" ;; esac
    if ! [[ $DATA_MB =~ ^[0-9]+$ ]] || [ "$DATA_MB" -lt 64 ]; then
        die "--data-mb: a number of MiB >= 64"
    fi
    build
}

main "$@"
