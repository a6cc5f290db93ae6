#!/bin/bash
# recorderpi native install for Raspberry Pi OS / Debian 12 (bookworm).
#
#   sudo services/install.sh                  install, or upgrade to this checkout
#   sudo services/install.sh --uninstall      remove the software; recordings stay
#   sudo services/install.sh --uninstall --purge
#                                             also remove the user, config, secrets and the
#                                             Syncthing identity; recordings still stay
#   sudo services/install.sh --root DIR       install into the Debian tree DIR (chroot: image
#                                             builds and tests); the same options apply inside
#   options: --no-apt (packages already there), --with-icecast (Cow Radio on this Pi: Icecast,
#            the Liquidsoap station and its unit), --radio-later (with --with-icecast: install
#            them, but leave the passwords and enabling to radio-setup.sh on the device; image)
#
# Idempotent: every step checks before it acts, so a second run with the same checkout changes
# nothing. A newer checkout upgrades the package in the venv. Nothing under /srv/recorder is
# ever deleted, moved or re-owned recursively: recordings are only ever touched by the recorder.
set -euo pipefail
umask 022

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/recorderpi
VENV=$PREFIX/venv
ETC=/etc/recorder
DATA=/srv/recorder
STATE=/var/lib/recorderpi
SERVICE_USER=recorder
UNIT_DIR=/etc/systemd/system
UNITS=(recorder.service recorder-firstboot.service)
DROPIN=syncthing@recorder.service.d
APT_PACKAGES=(
    ca-certificates python3 python3-venv python3-pip
    libportaudio2 libsndfile1 libchromaprint1 libchromaprint-tools
    syncthing nginx-light util-linux
)
# --- mesh network and time (yggdrasil, chrony, mDNS, journal) --------------------------------
# yggdrasil: the mesh's 200::/7 addresses; chrony: devices serve each other time over them;
# avahi-daemon: recorder-<id>.local on the LAN. See ensure_mesh_network.
MESH_PACKAGES=(yggdrasil chrony avahi-daemon nftables)
# Cow Radio (--with-icecast).
RADIO_PACKAGES=(icecast2 liquidsoap)
MESH_UNITS=(recorder-mesh-time.service recorder-mesh-time.timer)
YGG_DROPIN=yggdrasil.service.d
CHRONY_CONF=/etc/chrony/conf.d/recorderpi-mesh.conf

ROOT=""
UNINSTALL=0
PURGE=0
APT=1
ICECAST=0
RADIO_LATER=0
CHANGED=0

log() { echo "install: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
changed() {
    CHANGED=1
    log "$*"
}

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

parse_args() {
    local original=("$@")
    while [ $# -gt 0 ]; do
        case $1 in
            --root)
                [ $# -ge 2 ] || usage 2
                ROOT=$2
                shift
                ;;
            --root=*) ROOT=${1#--root=} ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            --no-apt) APT=0 ;;
            --with-icecast) ICECAST=1 ;;
            --radio-later) RADIO_LATER=1 ;;
            -h | --help) usage 0 ;;
            *)
                log "unknown option $1"
                usage 2
                ;;
        esac
        shift
    done
    PASS_ARGS=()
    local skip=0 a
    for a in "${original[@]}"; do
        if [ $skip -eq 1 ]; then
            skip=0
            continue
        fi
        case $a in
            --root) skip=1 ;;
            --root=*) ;;
            *) PASS_ARGS+=("$a") ;;
        esac
    done
}

systemd_running() { [ -d /run/systemd/system ]; }

# --- chroot mode ----------------------------------------------------------------------------
# Copy the checkout into DIR, give the chroot what apt and pip need (proc, dev, DNS), forbid
# service starts from package scripts (policy-rc.d), run this script inside, then undo it all.
run_in_root() {
    local root mounted=() policy_created=0 resolv_backup="" inner=/var/cache/recorderpi-install
    root=$(cd "$ROOT" && pwd)
    [ -x "$root/bin/bash" ] || die "$root does not look like a Debian root (no /bin/bash)"
    cleanup_root() {
        local m
        for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
        [ "$policy_created" -eq 0 ] || rm -f "$root/usr/sbin/policy-rc.d"
        if [ -n "$resolv_backup" ]; then
            mv -f "$resolv_backup" "$root/etc/resolv.conf"
        fi
        rm -rf "${root:?}$inner"
    }
    trap cleanup_root EXIT
    rm -rf "${root:?}$inner"
    mkdir -p "$root$inner"
    # Only what the install needs: the package, its metadata and the services/ tree.
    tar -C "$SRC" --exclude=.git --exclude='*.egg-info' --exclude=build --exclude=__pycache__ \
        --exclude=.pytest_cache -cf - pyproject.toml README.md recorder services docs 2>/dev/null |
        tar -C "$root$inner" -xf - || true
    [ -f "$root$inner/services/install.sh" ] || die "could not copy the checkout into $root"
    if ! mountpoint -q "$root/proc"; then
        mount -t proc proc "$root/proc"
        mounted+=("$root/proc")
    fi
    if [ ! -e "$root/usr/sbin/policy-rc.d" ]; then
        printf '#!/bin/sh\n# recorderpi install in a chroot: never start services\nexit 101\n' \
            >"$root/usr/sbin/policy-rc.d"
        chmod 0755 "$root/usr/sbin/policy-rc.d"
        policy_created=1
    fi
    if [ -e /etc/resolv.conf ]; then
        if [ -e "$root/etc/resolv.conf" ] || [ -L "$root/etc/resolv.conf" ]; then
            resolv_backup="$root/etc/resolv.conf.recorderpi-install"
            mv -f "$root/etc/resolv.conf" "$resolv_backup"
        fi
        cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    fi
    # pip inside the chroot trusts what the host trusts (a TLS-inspecting proxy's CA, say).
    local env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
        LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive) ca v
    ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}
    if [ -f "$ca" ]; then
        cp "$ca" "$root$inner/host-ca.crt"
        env+=("PIP_CERT=$inner/host-ca.crt")
    fi
    for v in PIP_INDEX_URL http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        if [ -n "${!v:-}" ]; then env+=("$v=${!v}"); fi
    done
    local rc=0
    chroot "$root" /usr/bin/env -i "${env[@]}" \
        /bin/bash "$inner/services/install.sh" "${PASS_ARGS[@]}" || rc=$?
    cleanup_root
    trap - EXIT
    return "$rc"
}

# --- install steps --------------------------------------------------------------------------

install_packages() {
    [ "$APT" -eq 1 ] || return 0
    local wanted=("${APT_PACKAGES[@]}" "${MESH_PACKAGES[@]}") missing=() p
    # Raspberry Pi OS ships gpiozero's preferred pin driver as a Debian package; plain Debian
    # has no GPIO header to drive.
    if apt-cache show python3-lgpio >/dev/null 2>&1; then wanted+=(python3-lgpio); fi
    [ "$ICECAST" -eq 0 ] || wanted+=("${RADIO_PACKAGES[@]}")
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    changed "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_user() {
    if ! getent group gpio >/dev/null; then
        groupadd --system gpio
        changed "group gpio created"
    fi
    if ! getent group audio >/dev/null; then
        groupadd --system audio
        changed "group audio created"
    fi
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "recorderpi service" "$SERVICE_USER"
        changed "user $SERVICE_USER created"
    fi
    local g
    for g in audio gpio; do
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx "$g"; then
            usermod -a -G "$g" "$SERVICE_USER"
            changed "user $SERVICE_USER added to group $g"
        fi
    done
}

# mkdir + owner + mode of one directory, never recursive.
ensure_dir() {
    local path=$1 mode=$2 owner=$3
    if [ ! -d "$path" ]; then
        install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$path"
        changed "created $path"
        return
    fi
    if [ "$(stat -c '%a %U:%G' "$path")" != "${mode#0} $owner" ]; then
        chmod "$mode" "$path"
        chown "$owner" "$path"
        changed "fixed owner/mode of $path"
    fi
}

# Copy a file only when its content or mode differs: a second run leaves every mtime alone.
put_file() {
    local src=$1 dst=$2 mode=$3 owner=${4:-root:root}
    if [ -f "$dst" ] && cmp -s "$src" "$dst" &&
        [ "$(stat -c '%a %U:%G' "$dst")" = "${mode#0} $owner" ]; then
        return 1
    fi
    install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$src" "$dst"
    changed "installed $dst"
}

ensure_dirs() {
    ensure_dir "$PREFIX" 0755 root:root
    ensure_dir "$ETC" 0755 root:root
    ensure_dir "$ETC/secrets" 0750 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$STATE" 0750 "$SERVICE_USER:$SERVICE_USER"
    # The data partition (its own filesystem in the image). Only these directories themselves
    # are created or fixed; what is inside them is never touched.
    ensure_dir "$DATA" 0755 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$DATA/sync" 0755 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$DATA/staging" 0750 "$SERVICE_USER:$SERVICE_USER"
    ensure_dir "$DATA/state" 0750 "$SERVICE_USER:$SERVICE_USER"
}

# The venv is upgraded only when the checkout changed (a content hash of what pip installs).
ensure_venv() {
    local want have build
    want=$(cd "$SRC" && find pyproject.toml recorder -type f ! -path '*/__pycache__/*' \
        ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    have=$(cat "$PREFIX/source.sha256" 2>/dev/null || true)
    if [ ! -x "$VENV/bin/python" ]; then
        # System site packages: Raspberry Pi OS's python3-lgpio pin driver for gpiozero.
        python3 -m venv --system-site-packages "$VENV"
        changed "venv created in $VENV"
        have=""
    fi
    if [ "$want" = "$have" ] && [ -x "$VENV/bin/recorder" ]; then
        return 0
    fi
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    build=$(mktemp -d)
    tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' --exclude=build \
        -cf - pyproject.toml README.md recorder 2>/dev/null | tar -C "$build" -xf - || true
    [ -f "$build/README.md" ] || : >"$build/README.md"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$build"
    rm -rf "$build"
    echo "$want" >"$PREFIX/source.sha256"
    changed "recorderpi installed in $VENV ($("$VENV/bin/recorder" --version 2>&1 || true))"
}

ensure_config() {
    put_file "$SRC/services/recorder.example.toml" "$ETC/recorder.example.toml" 0644 || true
    # The user's config is never overwritten, only created when absent.
    if [ ! -e "$ETC/recorder.toml" ]; then
        install -m 0640 -o root -g "$SERVICE_USER" "$SRC/services/recorder.example.toml" \
            "$ETC/recorder.toml"
        changed "config created: $ETC/recorder.toml"
    fi
}

ensure_files() {
    put_file "$SRC/services/firstboot.sh" "$PREFIX/firstboot.sh" 0755 || true
    put_file "$SRC/services/stignore" "$PREFIX/stignore" 0644 || true
    if [ -f "$SRC/docs/field-guide.md" ]; then
        put_file "$SRC/docs/field-guide.md" "$PREFIX/docs/field-guide.md" 0644 || true
    fi
    local tmp
    tmp=$(mktemp)
    printf '%s\n' '# recorderpi: the gpio group may use the GPIO character devices (gpiozero/lgpio).' \
        'SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"' >"$tmp"
    put_file "$tmp" /etc/udev/rules.d/60-recorderpi-gpio.rules 0644 || true
    rm -f "$tmp"
}

ensure_units() {
    local unit reload=0
    command -v systemctl >/dev/null || die "systemctl not found: recorderpi needs systemd"
    for unit in "${UNITS[@]}"; do
        if put_file "$SRC/services/systemd/$unit" "$UNIT_DIR/$unit" 0644; then reload=1; fi
    done
    if put_file "$SRC/services/systemd/$DROPIN/recorderpi.conf" \
        "$UNIT_DIR/$DROPIN/recorderpi.conf" 0644; then reload=1; fi
    if systemd_running && [ "$reload" -eq 1 ]; then systemctl daemon-reload; fi
    # `systemctl enable` works on the unit files alone, booted or not (chroot, image build).
    for unit in "${UNITS[@]}" syncthing@recorder.service; do
        if ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            systemctl enable --quiet "$unit" 2>/dev/null || systemctl enable "$unit"
            changed "enabled $unit"
        fi
    done
    if systemd_running && [ "$CHANGED" -eq 1 ] && [ -e "$STATE/firstboot.done" ]; then
        systemctl restart syncthing@recorder.service recorder.service
        log "services restarted"
    fi
}

ensure_docroot() {
    [ -d /etc/nginx ] || return 0
    local site=/etc/nginx/sites-available/recorder-docroot
    put_file "$SRC/services/nginx/recorder-docroot.conf" "$site" 0644 || true
    if [ "$(readlink /etc/nginx/sites-enabled/recorder-docroot 2>/dev/null)" != "$site" ]; then
        ln -sfn "$site" /etc/nginx/sites-enabled/recorder-docroot
        changed "nginx site recorder-docroot enabled"
    fi
    # Debian's default site also claims default_server on port 80.
    if [ -L /etc/nginx/sites-enabled/default ]; then
        rm -f /etc/nginx/sites-enabled/default
        changed "nginx default site disabled"
    fi
    if systemd_running && [ "$CHANGED" -eq 1 ]; then
        nginx -t -q && systemctl reload-or-restart nginx.service
    fi
}

# --- Cow Radio (--with-icecast) ---------------------------------------------------------------
# Icecast and the station (Liquidsoap, recorder-station.service). The passwords and icecast.xml
# are radio-setup.sh's job, run here on a live system, or on the device itself after an image
# build (--radio-later), so that no two cards share a password.
ensure_radio() {
    [ "$ICECAST" -eq 1 ] || return 0
    put_file "$SRC/services/icecast/icecast.xml" "$PREFIX/icecast/icecast.xml" 0644 || true
    put_file "$SRC/services/icecast/radio-setup.sh" "$PREFIX/radio-setup.sh" 0755 || true
    if put_file "$SRC/services/systemd/recorder-station.service" \
        "$UNIT_DIR/recorder-station.service" 0644 && systemd_running; then
        systemctl daemon-reload
    fi
    if [ "$RADIO_LATER" -eq 1 ]; then
        log "Cow Radio installed; on the device run: sudo $PREFIX/radio-setup.sh"
        return 0
    fi
    "$PREFIX/radio-setup.sh"
}

remove_radio() {
    if systemd_running; then systemctl stop recorder-station.service 2>/dev/null || true; fi
    systemctl disable --quiet recorder-station.service 2>/dev/null || true
    rm -f "$UNIT_DIR/recorder-station.service"
}

# --- mesh network and time ------------------------------------------------------------------
# yggdrasil runs Debian's unit with our drop-in (its config made from recorder.toml before each
# start); the recorder user may read yggdrasil's admin socket (group yggdrasil) for `recorder
# mesh status`; chrony serves and takes time over the mesh; a timer keeps chrony's mesh sources
# in step with the Syncthing peers.
ensure_mesh_network() {
    local unit reload=0
    if getent group yggdrasil >/dev/null; then
        if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx yggdrasil; then
            usermod -a -G yggdrasil "$SERVICE_USER"
            changed "user $SERVICE_USER added to group yggdrasil"
        fi
    else
        log "warning: no group yggdrasil (package yggdrasil missing?): mesh status cannot read it"
    fi
    if put_file "$SRC/services/systemd/$YGG_DROPIN/recorderpi.conf" \
        "$UNIT_DIR/$YGG_DROPIN/recorderpi.conf" 0644; then reload=1; fi
    for unit in "${MESH_UNITS[@]}"; do
        if put_file "$SRC/services/systemd/$unit" "$UNIT_DIR/$unit" 0644; then reload=1; fi
    done
    local chrony_changed=0
    if [ -d /etc/chrony ]; then
        if put_file "$SRC/services/chrony/recorderpi-mesh.conf" "$CHRONY_CONF" 0644; then
            chrony_changed=1
        fi
        ensure_dir /etc/chrony/sources.d 0755 root:root
    fi
    if systemd_running && [ "$reload" -eq 1 ]; then systemctl daemon-reload; fi
    for unit in yggdrasil.service recorder-mesh-time.timer; do
        if [ -e "/lib/systemd/system/$unit" ] || [ -e "$UNIT_DIR/$unit" ] &&
            ! systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            systemctl enable --quiet "$unit" 2>/dev/null || systemctl enable "$unit"
            changed "enabled $unit"
        fi
    done
    if systemd_running && [ "$reload" -eq 1 ] && [ -e "$STATE/firstboot.done" ]; then
        systemctl restart yggdrasil.service || log "warning: yggdrasil did not restart"
    fi
    if systemd_running && [ "$chrony_changed" -eq 1 ]; then
        systemctl restart chrony.service || log "warning: chrony did not restart"
    fi
}

# --- firewall (recorder.mesh.membership.firewall) ----------------------------------------------
# The service keeps the nftables table inet recorderpi in step with the roster: our drop-in
# gives it CAP_NET_ADMIN. A flushed rule set (nftables.service restarted) is loaded again by the
# service within seconds.
FW_DROPIN=recorder.service.d
ensure_firewall() {
    if put_file "$SRC/services/systemd/$FW_DROPIN/firewall.conf" \
        "$UNIT_DIR/$FW_DROPIN/firewall.conf" 0644 && systemd_running; then
        systemctl daemon-reload
        if [ -e "$STATE/firstboot.done" ]; then systemctl restart recorder.service; fi
    fi
}

remove_firewall() {
    rm -rf "${UNIT_DIR:?}/$FW_DROPIN"
    if systemd_running && command -v nft >/dev/null; then
        nft delete table inet recorderpi 2>/dev/null || true
    fi
}

# gpiozero's pin driver on a Pi whose OS has no python3-lgpio package (plain Debian arm64):
# PyPI's lgpio wheel (it bundles the C library).
ensure_lgpio() {
    [ "$(uname -m)" = aarch64 ] || return 0
    "$VENV/bin/python" -c 'import lgpio' 2>/dev/null && return 0
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'lgpio>=0.2.2' ||
        die "could not install lgpio (GPIO pin driver) into $VENV"
    changed "lgpio installed in $VENV"
}

install_all() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
    [ -f "$SRC/pyproject.toml" ] || die "$SRC is not a recorderpi checkout"
    install_packages
    ensure_user
    ensure_dirs
    ensure_venv
    ensure_config
    ensure_files
    ensure_units
    ensure_docroot
    ensure_radio
    ensure_mesh_network
    ensure_firewall
    ensure_lgpio
    if [ "$CHANGED" -eq 0 ]; then
        log "nothing to do: recorderpi is installed and up to date"
    else
        log "done. First boot provisioning runs at the next boot (or: $PREFIX/firstboot.sh)"
    fi
}

uninstall_all() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
    remove_radio
    local unit
    for unit in recorder.service recorder-firstboot.service syncthing@recorder.service; do
        if systemd_running; then systemctl stop "$unit" 2>/dev/null || true; fi
        systemctl disable --quiet "$unit" 2>/dev/null || true
    done
    rm -f "$UNIT_DIR/recorder.service" "$UNIT_DIR/recorder-firstboot.service"
    rm -rf "${UNIT_DIR:?}/$DROPIN"
    rm -f /etc/nginx/sites-enabled/recorder-docroot /etc/nginx/sites-available/recorder-docroot
    rm -f /etc/udev/rules.d/60-recorderpi-gpio.rules
    # The mesh: our drop-in, timer and chrony snippet go; yggdrasil and chrony stay installed.
    systemctl disable --quiet recorder-mesh-time.timer 2>/dev/null || true
    rm -f "$UNIT_DIR/recorder-mesh-time.service" "$UNIT_DIR/recorder-mesh-time.timer"
    rm -rf "${UNIT_DIR:?}/$YGG_DROPIN"
    remove_firewall
    rm -f "$CHRONY_CONF" /etc/chrony/sources.d/recorderpi-mesh.sources
    rm -rf "${PREFIX:?}"
    if systemd_running; then systemctl daemon-reload; fi
    if [ "$PURGE" -eq 1 ]; then
        rm -rf "${ETC:?}" "${STATE:?}"
        # This device's yggdrasil identity (keys: its 200::/7 address), like Syncthing's.
        rm -f /etc/yggdrasil/yggdrasil.conf
        if id "$SERVICE_USER" >/dev/null 2>&1; then userdel "$SERVICE_USER"; fi
        log "purged config, secrets, Syncthing identity and user $SERVICE_USER"
    else
        log "kept $ETC (config, secrets), $STATE (Syncthing identity) and user $SERVICE_USER"
    fi
    log "uninstalled; recordings are still in $DATA"
}

main() {
    parse_args "$@"
    if [ -n "$ROOT" ]; then
        [ "$(id -u)" -eq 0 ] || die "--root needs root (chroot)"
        run_in_root
        return
    fi
    if [ "$UNINSTALL" -eq 1 ]; then
        uninstall_all
    else
        install_all
    fi
}

main "$@"
