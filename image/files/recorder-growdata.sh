#!/bin/bash
# Grow the recordings partition (label recorder-data, mounted on /srv/recorder) to the end of
# the SD card, once, at first boot. The image ships it small so it flashes fast; the card's
# whole free space belongs to recordings. Online: ext4 grows while mounted.
set -euo pipefail

LABEL=${RECORDER_DATA_LABEL:-recorder-data}
MARKER=${RECORDER_GROWDATA_MARKER:-/var/lib/recorderpi/growdata.done}

log() { echo "growdata: $*" >&2; }

part=$(blkid -L "$LABEL") || {
    log "no partition labelled $LABEL; nothing to grow"
    exit 0
}
disk=/dev/$(lsblk -no PKNAME "$part")
num=$(cat "/sys/class/block/${part##*/}/partition")
last=$(lsblk -nro NAME,TYPE "$disk" | awk '$2 == "part"' | tail -n 1 | cut -d' ' -f1)
if [ "${part##*/}" != "$last" ]; then
    log "$part is not the last partition of $disk; leaving it as it is"
else
    # sfdisk keeps the start and takes all the free space after it ("+").
    echo ", +" | sfdisk --no-reread --no-tell-kernel -N "$num" "$disk" >/dev/null
    partx -u "$disk" || true
    resize2fs "$part" >/dev/null
    log "$part now spans $(lsblk -bno SIZE "$part") bytes"
fi
mkdir -p "$(dirname "$MARKER")"
date -u +%Y-%m-%dT%H:%M:%SZ >"$MARKER"
