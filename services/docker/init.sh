#!/bin/bash
# recorderpi compose stack, service "init": runs once before every other service at each
# `docker compose up`, as root on the host network (so it sees the Pi's own interfaces), and
# exits 0 when the stack may start. What it does, each step idempotent:
#  1. secrets: every missing secret file in the secrets volume is made (random, mode 0640,
#     owner RECORDER_UID:RECORDER_GID); existing ones are never changed.
#  2. device id: RECORDER_DEVICE_ID if set, else the one kept from the first start, else
#     derived from the host's MAC address (the native install's rule); kept in the secrets
#     volume, so it never changes afterwards. No id: one line saying how to set it, exit 2.
#  3. config: /etc/recorder/recorder.toml (the config volume) written from the template
#     (services/recorder.compose.toml, mounted) with the device id filled in (and, on a hub,
#     no audio and the station off unless its radio profile runs), at every start, so edits
#     of the template take effect on the next `up`.
#  4. the data directory: owned by RECORDER_UID, with papad's place in it.
set -euo pipefail
secrets=/run/secrets
uid=${RECORDER_UID:-10001}
gid=${RECORDER_GID:-10001}
template=${RECORDER_TEMPLATE:-/template/recorder.toml}
[ -f "$template" ] || template=/usr/local/share/recorderpi/recorder.compose.toml
config=/etc/recorder/recorder.toml
data=/srv/recorder

die() { echo "init: $*" >&2; exit 2; }

# Writes stdin to $1 so that no reader ever sees a half-written file.
put() {
  tmp="$1.init-tmp"
  cat >"$tmp"
  chown "$uid:$gid" "$tmp"
  chmod "$2" "$tmp"
  sync "$tmp"
  mv -f "$tmp" "$1"
}

random() { python3 -c "import secrets, sys; print(secrets.token_$1(int(sys.argv[1])))" "$2"; }

made=""
make_secret() {  # name kind bytes
  if [ ! -s "$secrets/$1" ]; then
    random "$2" "$3" | put "$secrets/$1" 0640
    made="$made $1"
  fi
}
make_secret syncthing-api-key urlsafe 24
# Icecast passwords in hex: easy to type into a source client. (radio-setup.sh's renderer
# takes any value literally and XML-escapes it; tests/test_icecast_render.py.)
make_secret icecast-source-password hex 18
make_secret icecast-relay-password hex 18
make_secret icecast-admin-password hex 18
make_secret web-password urlsafe 12
make_secret papad-token hex 20            # DRF token: 40 hex digits
make_secret papad-django-secret urlsafe 50
make_secret papad-admin-password urlsafe 12
[ -z "$made" ] || echo "init: made secrets:$made"

# --- device id ---------------------------------------------------------------------------
kept=""
[ ! -s "$secrets/device-id" ] || kept=$(cat "$secrets/device-id")
if [ -n "${RECORDER_DEVICE_ID:-}" ]; then
  id=$RECORDER_DEVICE_ID
  if [ -n "$kept" ] && [ "$kept" != "$id" ]; then
    die "RECORDER_DEVICE_ID=$id differs from this device's id $kept: a device's id never changes (remove the setting, or start from empty volumes)"
  fi
elif [ -n "$kept" ]; then
  id=$kept
else
  id=$(python3 -c 'from recorder.deviceid import mac_device_id; print(mac_device_id() or "")')
  [ -n "$id" ] || die "no device id: no network interface with a MAC address is visible here; set RECORDER_DEVICE_ID=<12 hex digits> in services/.env (on a Pi: services/firstboot.sh device-id)"
fi
python3 -c 'import sys; from recorder.deviceid import validate_device_id; validate_device_id(sys.argv[1], "RECORDER_DEVICE_ID")' "$id" 2>/dev/null \
  || die "RECORDER_DEVICE_ID: '$id' is not a device id (lowercase letters, digits and '-')"
[ "$id" = "$kept" ] || { printf '%s\n' "$id" | put "$secrets/device-id" 0644; echo "init: device id $id"; }

# --- config ------------------------------------------------------------------------------
grep -q '^id = "set-me"$' "$template" \
  || die "$template: its [device] section must keep the line id = \"set-me\" (init fills in the id)"
# A hub (hub.yaml: RECORDER_ROLE=hub) records nothing: [audio] source = "none", the
# recorder's no-audio mode; its station is on only with the radio profile (COMPOSE_PROFILES).
hub=()
if [ "${RECORDER_ROLE:-device}" = hub ]; then
  grep -q '^source = ' "$template" \
    || die "$template: its [audio] section must keep a line source = \"...\" (a hub sets it to \"none\")"
  hub=(-e 's/^source = .*$/source = "none"/')
  case ",${COMPOSE_PROFILES:-}," in
    *,radio,*) ;;
    *) hub+=(-e 's/^station = true$/station = false/') ;;
  esac
fi
sed -e "s/^id = \"set-me\"\$/id = \"$id\"/" "${hub[@]}" "$template" | put "$config" 0644
python3 -c 'import sys; from recorder.config import load_config; load_config(sys.argv[1])' "$config" \
  || die "$config: the config is refused (see above); fix $template"

# --- data ------------------------------------------------------------------------------------
# Docker makes a missing bind-mount source as root: the directories the services share are
# given to RECORDER_UID (their contents are the services' own business).
for dir in "$data" "$data/sync" "$data/papad" "$data/papad/media"; do
  install -d -m 0755 "$dir"
  [ "$(stat -c %u:%g "$dir")" = "$uid:$gid" ] || chown "$uid:$gid" "$dir"
done
echo "init: ready (device $id)"
