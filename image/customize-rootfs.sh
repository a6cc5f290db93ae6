#!/bin/bash
# Turn a mounted Raspberry Pi OS (or any Debian 12) root tree into a recorderpi appliance root:
# the native install (inside a chroot), the recordings partition in fstab, a persistent bounded
# journal on the data partition, and the one-time growth of the data partition. Per-device identity (device id, Syncthing keys,
# hostname) is NOT made here: recorder-firstboot.service does it on each card's first boot.
#
#   image/customize-rootfs.sh ROOTFS [--no-install]
#
# Idempotent. Runs on any Debian-like build host as root; an arm64 root on an x86 host needs
# qemu-user-static's binfmt handler so the chroot can run arm64 binaries.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
DATA_LABEL=${RECORDER_DATA_LABEL:-recorder-data}

log() { echo "customize: $*" >&2; }

[ $# -ge 1 ] || {
    echo "usage: $0 ROOTFS [--no-install]" >&2
    exit 2
}
ROOTFS=$(cd "$1" && pwd)
INSTALL=1
[ "${2:-}" != --no-install ] || INSTALL=0
[ "$(id -u)" -eq 0 ] || {
    log "run as root"
    exit 1
}
[ -d "$ROOTFS/etc" ] || {
    log "$ROOTFS is not a root filesystem"
    exit 1
}

# --- Cow Radio --------------------------------------------------------------------------------
# Icecast and the station (Liquidsoap, recorder-station.service) are on every card, but set up
# on the card itself (`sudo /opt/recorderpi/radio-setup.sh`), so no two cards share a password.
RADIO_INSTALL_ARGS=(--with-icecast --radio-later)

if [ "$INSTALL" -eq 1 ]; then
    "$SRC/services/install.sh" --root "$ROOTFS" "${RADIO_INSTALL_ARGS[@]}"
fi

# The recordings partition. nofail: a card whose data partition is damaged still boots, and the
# recorder then reports the problem (doctor, LED) instead of the Pi being unreachable.
fstab_line="LABEL=$DATA_LABEL /srv/recorder ext4 defaults,noatime,commit=5,nofail,x-systemd.device-timeout=120s 0 2"
if ! grep -q "^LABEL=${DATA_LABEL}[[:space:]]" "$ROOTFS/etc/fstab" 2>/dev/null; then
    echo "$fstab_line" >>"$ROOTFS/etc/fstab"
    log "fstab: $DATA_LABEL on /srv/recorder"
fi
install -d -m 0755 "$ROOTFS/srv/recorder"

# The journal on the data partition (journald-recorderpi.conf bounds it). The directory is made
# here, on the data partition mounted by build.sh; systemd-journald owns what is inside.
journal_line="/srv/recorder/journal /var/log/journal none bind,nofail,x-systemd.requires-mounts-for=/srv/recorder 0 0"
if ! grep -q '^/srv/recorder/journal[[:space:]]' "$ROOTFS/etc/fstab" 2>/dev/null; then
    echo "$journal_line" >>"$ROOTFS/etc/fstab"
    log "fstab: journal on the data partition"
fi
install -d -m 2755 "$ROOTFS/srv/recorder/journal" "$ROOTFS/var/log/journal"
if chroot "$ROOTFS" getent group systemd-journal >/dev/null 2>&1; then
    chroot "$ROOTFS" chgrp systemd-journal /srv/recorder/journal /var/log/journal
fi

install -D -m 0644 "$HERE/files/journald-recorderpi.conf" \
    "$ROOTFS/etc/systemd/journald.conf.d/recorderpi.conf"
install -D -m 0755 "$HERE/files/recorder-growdata.sh" "$ROOTFS/usr/local/sbin/recorder-growdata.sh"
install -D -m 0644 "$HERE/files/recorder-growdata.service" \
    "$ROOTFS/etc/systemd/system/recorder-growdata.service"
if [ -x "$ROOTFS/bin/systemctl" ] || [ -x "$ROOTFS/usr/bin/systemctl" ]; then
    chroot "$ROOTFS" systemctl enable --quiet recorder-growdata.service
fi

# Where the image came from, for `recorder doctor` and support.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n 1)
printf 'RECORDERPI_VERSION=%s\nRECORDERPI_IMAGE_BUILT=%s\n' "$version" \
    "$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)" \
    >"$ROOTFS/etc/recorderpi-image"
log "done: $ROOTFS"
