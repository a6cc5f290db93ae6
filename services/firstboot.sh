#!/bin/bash
# recorderpi first boot: make this card a distinct device.
#
#   1. derive the device id (MAC of the first real interface) and pin it in the config, so a USB
#      network adapter plugged in later can never rename the device's folder;
#   2. generate Syncthing keys for the service user (never baked into the image: every card
#      must have its own identity);
#   3. configure Syncthing: GUI/REST on 127.0.0.1 only, an API key shared with the recorder
#      through /etc/recorder/secrets/syncthing-api-key, field-friendly options;
#   4. set the hostname to recorder-<id>;
#   5. create this device's Syncthing folder with `recorder mesh setup`;
#   6. create the web page's password (/etc/recorder/secrets/web-password).
#   7. if a join code was left on the boot partition ($JOIN_FILE, one line: the code printed by
#      `recorder mesh invite` on a device of the mesh), join the mesh with it
#      (`recorder mesh join --timeout 0`: the services finish the pairing once they run) and
#      delete the file (the code is a secret; a failed one is kept as $JOIN_FILE.failed).
#
# Every step checks before it acts, so running it again changes nothing. The marker file is
# written only when all steps succeeded: a failed step is retried at the next boot.
# Logs go to stderr (the journal under systemd) and to $STATE_DIR/firstboot.log.
#
# Usage: firstboot.sh            run all steps
#        firstboot.sh device-id  print the MAC-derived device id and exit
#
# Environment overrides (for tests and image builds; defaults are the appliance paths):
#   RECORDER_SYS_CLASS_NET  (/sys/class/net)          RECORDER_ETC    (/etc/recorder)
#   RECORDER_STATE_DIR      (/var/lib/recorderpi)     RECORDER_PREFIX (/opt/recorderpi)
#   RECORDER_USER           (recorder)                RECORDER_HOSTNAME_FILE (/etc/hostname)
#   RECORDER_HOSTS_FILE     (/etc/hosts)              RECORDER_SYNCTHING_GUI (127.0.0.1:8384)
#   RECORDER_JOIN_FILE      (/boot/firmware/recorderpi-join.txt)
set -euo pipefail
umask 022

SYS_CLASS_NET=${RECORDER_SYS_CLASS_NET:-/sys/class/net}
ETC=${RECORDER_ETC:-/etc/recorder}
STATE_DIR=${RECORDER_STATE_DIR:-/var/lib/recorderpi}
PREFIX=${RECORDER_PREFIX:-/opt/recorderpi}
SERVICE_USER=${RECORDER_USER:-recorder}
HOSTNAME_FILE=${RECORDER_HOSTNAME_FILE:-/etc/hostname}
HOSTS_FILE=${RECORDER_HOSTS_FILE:-/etc/hosts}
CONFIG=$ETC/recorder.toml
SECRETS=$ETC/secrets
API_KEY_FILE=$SECRETS/syncthing-api-key
ST_HOME=$STATE_DIR/syncthing
ST_GUI=${RECORDER_SYNCTHING_GUI:-127.0.0.1:8384}
JOIN_FILE=${RECORDER_JOIN_FILE:-/boot/firmware/recorderpi-join.txt}
MARKER=$STATE_DIR/firstboot.done
RECORDER=$PREFIX/venv/bin/recorder
LOG=$STATE_DIR/firstboot.log

log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) firstboot: $*"
    echo "$line" >&2
    if [ -d "$STATE_DIR" ]; then echo "$line" >>"$LOG" || true; fi
}

die() {
    log "error: $*"
    exit 1
}

# The same rule as recorder.deviceid.mac_device_id: skip virtual interfaces, keep those with a
# `device` link and a valid unicast-looking MAC, wired before wireless, then by name.
mac_device_id() {
    local iface name mac wireless best=""
    for iface in "$SYS_CLASS_NET"/*; do
        [ -e "$iface" ] || continue
        name=${iface##*/}
        case $name in
            lo* | docker* | br-* | veth* | virbr* | tun* | tap* | wg* | ygg* | dummy*) continue ;;
        esac
        [ -e "$iface/device" ] || continue
        mac=$(tr 'A-F' 'a-f' <"$iface/address" 2>/dev/null) || continue
        [[ $mac =~ ^([0-9a-f]{2}:){5}[0-9a-f]{2}$ ]] || continue
        [ "$mac" != "00:00:00:00:00:00" ] || continue
        wireless=0
        [ -e "$iface/wireless" ] && wireless=1
        best+="$wireless $name ${mac//:/}"$'\n'
    done
    [ -n "$best" ] || return 1
    printf '%s' "$best" | LC_ALL=C sort | head -n 1 | cut -d' ' -f3
}

as_user() {
    if [ "$(id -u)" -eq 0 ] && [ "$(id -un)" != "$SERVICE_USER" ]; then
        runuser -u "$SERVICE_USER" -- "$@"
    else
        "$@"
    fi
}

# The device id the recorder will use: the configured one if set, else the MAC id, pinned in
# the config's [device] section so it never changes afterwards.
ensure_device_id() {
    local configured id
    configured=$(awk '
        /^\[/ { section = $0 }
        section == "[device]" && /^id[ \t]*=/ {
            sub(/^id[ \t]*=[ \t]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$CONFIG" 2>/dev/null || true)
    if [ -n "$configured" ]; then
        DEVICE_ID=$configured
        log "device id $DEVICE_ID (configured)"
        return
    fi
    id=$(mac_device_id) || die "no network interface with a MAC address under $SYS_CLASS_NET"
    DEVICE_ID=$id
    if [ -f "$CONFIG" ] && grep -q '^id = ""$' "$CONFIG"; then
        # Only the [device] section's empty id line is replaced; the rest of the file is kept.
        awk -v id="$id" '
            /^\[/ { section = $0 }
            section == "[device]" && $0 == "id = \"\"" { $0 = "id = \"" id "\"" }
            { print }' "$CONFIG" >"$CONFIG.firstboot" &&
            chmod --reference="$CONFIG" "$CONFIG.firstboot" &&
            chown --reference="$CONFIG" "$CONFIG.firstboot" &&
            mv "$CONFIG.firstboot" "$CONFIG"
        log "device id $DEVICE_ID (from the MAC address, pinned in $CONFIG)"
    else
        log "device id $DEVICE_ID (from the MAC address)"
    fi
}

ensure_syncthing_keys() {
    if [ -s "$ST_HOME/cert.pem" ] && [ -s "$ST_HOME/key.pem" ] && [ -s "$ST_HOME/config.xml" ]; then
        log "syncthing keys present in $ST_HOME"
        return
    fi
    # A power cut during an earlier first boot can leave them empty (written, never flushed):
    # the identity was never announced (no marker yet), so it is made anew.
    rm -f "$ST_HOME/cert.pem" "$ST_HOME/key.pem" "$ST_HOME/config.xml"
    install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$ST_HOME"
    as_user syncthing generate --home="$ST_HOME" --no-default-folder --skip-port-probing >/dev/null
    log "syncthing keys generated in $ST_HOME"
}

ensure_api_key() {
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$SECRETS"
    if [ ! -s "$API_KEY_FILE" ]; then
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$API_KEY_FILE")
        log "syncthing api key created in $API_KEY_FILE"
    fi
    chown "$SERVICE_USER:$SERVICE_USER" "$API_KEY_FILE"
    chmod 0600 "$API_KEY_FILE"
}

# The web page's password (its controls: start, stop, bookmark, live, retry): one per card,
# random; a volunteer reads it with `sudo cat /etc/recorder/secrets/web-password`.
ensure_web_password() {
    local file=$SECRETS/web-password
    if [ ! -s "$file" ]; then
        (umask 077 && head -c 12 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
        log "web page password created in $file"
    fi
    chown "$SERVICE_USER:$SERVICE_USER" "$file"
    chmod 0600 "$file"
}

# Loopback-only GUI with our API key, no browser, no usage reporting, no self-upgrade, fast
# reconnection after a field link drops (the default 60 s is far too slow for a mesh of Pis).
configure_syncthing() {
    local changed
    changed=$(python3 - "$ST_HOME/config.xml" "$API_KEY_FILE" "$ST_GUI" "recorder-$DEVICE_ID" <<'PY'
import sys
import xml.etree.ElementTree as ET

path, key_file, address, name = sys.argv[1:]
key = open(key_file, encoding="ascii").read().strip()
tree = ET.parse(path)
root = tree.getroot()
changed = False


def put(parent, tag, value):
    global changed
    node = parent.find(tag)
    if node is None:
        node = ET.SubElement(parent, tag)
    if node.text != value:
        node.text = value
        changed = True


gui = root.find("gui")
put(gui, "address", address)
put(gui, "apikey", key)
if gui.get("tls") != "false":
    gui.set("tls", "false")
    changed = True
options = root.find("options")
for tag, value in (
    ("urAccepted", "-1"),
    ("crashReportingEnabled", "false"),
    ("startBrowser", "false"),
    ("autoUpgradeIntervalH", "0"),
    ("reconnectionIntervalS", "5"),
):
    put(options, tag, value)
# The first <device> is this device itself: give it the readable name peers will see.
me = root.find("device")
if me is not None and me.get("name") != name:
    me.set("name", name)
    changed = True
if changed:
    tree.write(path + ".new", encoding="utf-8", xml_declaration=False)
print("changed" if changed else "same")
PY
    )
    if [ "$changed" = changed ]; then
        chown --reference="$ST_HOME/config.xml" "$ST_HOME/config.xml.new"
        chmod 0600 "$ST_HOME/config.xml.new"
        mv "$ST_HOME/config.xml.new" "$ST_HOME/config.xml"
        log "syncthing configured: GUI on $ST_GUI, api key from $API_KEY_FILE"
    else
        log "syncthing already configured"
    fi
}

ensure_hostname() {
    local want="recorder-$DEVICE_ID"
    if [ "$(cat "$HOSTNAME_FILE" 2>/dev/null)" = "$want" ]; then
        log "hostname already $want"
        return
    fi
    echo "$want" >"$HOSTNAME_FILE"
    if [ -f "$HOSTS_FILE" ]; then
        if grep -q '^127\.0\.1\.1[[:space:]]' "$HOSTS_FILE"; then
            sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$want/" "$HOSTS_FILE"
        else
            printf '127.0.1.1\t%s\n' "$want" >>"$HOSTS_FILE"
        fi
    fi
    # Apply now only on the real system; in a chroot or test tree the file is enough.
    if [ "$HOSTNAME_FILE" = /etc/hostname ] && [ -d /run/systemd/system ]; then
        hostnamectl set-hostname "$want" || log "warning: hostnamectl failed; applied at next boot"
    fi
    log "hostname set to $want"
}

ensure_stignore() {
    local folder
    folder=$(sync_root)/$DEVICE_ID
    install -d -m 0755 -o "$SERVICE_USER" -g "$SERVICE_USER" "$folder"
    if [ ! -f "$folder/.stignore" ] && [ -f "$PREFIX/stignore" ]; then
        install -m 0644 -o "$SERVICE_USER" -g "$SERVICE_USER" "$PREFIX/stignore" "$folder/.stignore"
        log ".stignore installed in $folder"
    fi
}

sync_root() {
    local value
    value=$(awk '
        /^\[/ { section = $0 }
        section == "[storage]" && /^sync_root[ \t]*=/ {
            sub(/^sync_root[ \t]*=[ \t]*"/, ""); sub(/".*$/, ""); print; exit
        }' "$CONFIG" 2>/dev/null || true)
    echo "${value:-/srv/recorder/sync}"
}

# `recorder mesh setup` needs Syncthing's REST API. At boot syncthing@recorder is ordered after
# this unit, so a private instance is started for the duration of the setup and stopped again.
mesh_setup() {
    local pid="" key i
    key=$(cat "$API_KEY_FILE")
    if ! curl_ping "$key"; then
        as_user env STNODEFAULTFOLDER=1 STMONITORED=yes \
            syncthing serve --home="$ST_HOME" --no-browser --no-restart --logflags=0 \
            >>"$LOG" 2>&1 &
        pid=$!
        for i in $(seq 1 60); do
            curl_ping "$key" && break
            kill -0 "$pid" 2>/dev/null || die "syncthing exited during first boot (see $LOG)"
            [ "$i" -lt 60 ] || die "syncthing REST API did not answer on $ST_GUI"
            sleep 1
        done
    fi
    local rc=0
    as_user "$RECORDER" --config "$CONFIG" mesh setup || rc=$?
    [ "$rc" -ne 0 ] || mesh_join
    if [ -n "$pid" ]; then
        python3 - "$ST_GUI" "$key" <<'PY' || kill "$pid" 2>/dev/null || true
import sys
import urllib.request

req = urllib.request.Request(
    f"http://{sys.argv[1]}/rest/system/shutdown", method="POST", headers={"X-API-Key": sys.argv[2]}
)
urllib.request.urlopen(req, timeout=5).read()
PY
        wait "$pid" 2>/dev/null || true
    fi
    [ "$rc" -eq 0 ] || die "recorder mesh setup failed (exit $rc)"
    log "syncthing folder for $DEVICE_ID set up"
}

# Join the mesh with a code from the boot partition, if one is there. A bad code does not fail
# the first boot (the device works on its own; `recorder mesh join` can be run later).
mesh_join() {
    [ -s "$JOIN_FILE" ] || return 0
    local code rc=0
    code=$(tr -d ' \t\r\n' <"$JOIN_FILE")
    as_user "$RECORDER" --config "$CONFIG" mesh join --timeout 0 "$code" || rc=$?
    if [ "$rc" -eq 0 ]; then
        rm -f "$JOIN_FILE"
        log "joined the mesh with the code from $JOIN_FILE (file removed)"
    else
        mv -f "$JOIN_FILE" "$JOIN_FILE.failed" || true
        log "warning: recorder mesh join failed (exit $rc); the code is in $JOIN_FILE.failed"
    fi
}

curl_ping() {
    python3 - "$ST_GUI" "$1" <<'PY' 2>/dev/null
import sys
import urllib.request

req = urllib.request.Request(f"http://{sys.argv[1]}/rest/system/ping", headers={"X-API-Key": sys.argv[2]})
sys.exit(0 if b"pong" in urllib.request.urlopen(req, timeout=2).read() else 1)
PY
}

main() {
    if [ "${1:-}" = device-id ]; then
        mac_device_id || { echo "no network interface with a MAC address" >&2; exit 1; }
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    if [ -f "$MARKER" ]; then
        log "already provisioned ($MARKER); delete it to run first boot again"
        return
    fi
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    log "starting"
    ensure_device_id
    ensure_syncthing_keys
    ensure_api_key
    ensure_web_password
    configure_syncthing
    ensure_hostname
    ensure_stignore
    mesh_setup
    # Everything made above reaches the card before the marker says so (a power cut right after
    # must not leave a marker in front of empty keys); the marker itself appears whole or not.
    sync
    date -u +%Y-%m-%dT%H:%M:%SZ >"$MARKER.tmp"
    sync "$MARKER.tmp"
    mv "$MARKER.tmp" "$MARKER"
    sync "$STATE_DIR"
    log "done: recorder-$DEVICE_ID provisioned"
}

main "$@"
