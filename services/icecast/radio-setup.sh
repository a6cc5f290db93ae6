#!/bin/bash
# Cow Radio on this device: Icecast's passwords, its config, and the station unit.
#
#   sudo /opt/recorderpi/radio-setup.sh
#   radio-setup.sh render TEMPLATE SECRETS_DIR HOSTNAME > icecast.xml   # step 2 only
#
# Run by `services/install.sh --with-icecast` on a running system, and by hand on a card
# flashed from the image (whose Icecast and Liquidsoap are installed but not set up, so that
# no two cards share a password). Idempotent: every step checks before it acts.
#
# 1. /etc/recorder/secrets/icecast-{source,relay,admin}-password, made once (0600, recorder);
# 2. /etc/icecast2/icecast.xml from the template with those passwords (0640 root:icecast);
# 3. icecast2 and recorder-station enabled, and (re)started when something changed.
# The station itself is switched on in recorder.toml: [radio] station = true, password_file.
set -euo pipefail
umask 022

PREFIX=${RECORDER_PREFIX:-/opt/recorderpi}
ETC=${RECORDER_ETC:-/etc/recorder}
TEMPLATE=${RECORDER_ICECAST_TEMPLATE:-$PREFIX/icecast/icecast.xml}
ICECAST_XML=${RECORDER_ICECAST_XML:-/etc/icecast2/icecast.xml}
SERVICE_USER=${RECORDER_USER:-recorder}
SYSTEMCTL=${RECORDER_SYSTEMCTL:-systemctl}
CHANGED=0

log() { echo "radio-setup: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Writes TEMPLATE with every @ICECAST_...@ placeholder replaced (all occurrences, the value
# XML-escaped and taken literally: a secret holding "--", "&", "|" or "\" stays itself) to
# stdout; a missing or empty secret, or a placeholder it does not know, fails with one line.
# compose.yaml's icecast service runs this too. perl-base is Essential in Debian.
render_icecast_xml() {
    ICECAST_SECRETS=$2 ICECAST_HOSTNAME=$3 perl -e '
        use strict; use warnings;
        my ($template) = @ARGV;
        open(my $in, "<", $template) or die "radio-setup: $template: $!\n";
        my $text = do { local $/; <$in> };
        sub secret {
            my $file = "$ENV{ICECAST_SECRETS}/icecast-$_[0]-password";
            open(my $fh, "<", $file) or die "radio-setup: $file: $!\n";
            my $value = do { local $/; <$fh> } // "";
            $value =~ s/\s+\z//;
            length $value or die "radio-setup: $file is empty\n";
            return $value;
        }
        my %value = (SOURCE_PASSWORD => secret("source"), RELAY_PASSWORD => secret("relay"),
                     ADMIN_PASSWORD => secret("admin"), HOSTNAME => $ENV{ICECAST_HOSTNAME});
        my %xml = ("&" => "&amp;", "<" => "&lt;", ">" => "&gt;", "\"" => "&quot;", "\x27" => "&apos;");
        $text =~ s{\@ICECAST_([A-Z_]+)\@}{
            defined $value{$1} or die "radio-setup: $template: unknown placeholder \@ICECAST_$1\@\n";
            (my $v = $value{$1}) =~ s/([&<>"\x27])/$xml{$1}/g; $v
        }ge;
        print $text;
    ' "$1" || return 1
}

if [ "${1:-}" = render ]; then
    [ "$#" -eq 4 ] || die "usage: radio-setup.sh render TEMPLATE SECRETS_DIR HOSTNAME"
    render_icecast_xml "$2" "$3" "$4"
    exit
fi

[ "$(id -u)" -eq 0 ] || die "run as root (sudo)"
[ -f "$TEMPLATE" ] || die "$TEMPLATE missing: run services/install.sh --with-icecast"
id "$SERVICE_USER" >/dev/null 2>&1 || die "user $SERVICE_USER missing: run services/install.sh"

install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$ETC/secrets"
for name in source relay admin; do
    file=$ETC/secrets/icecast-$name-password
    if [ ! -s "$file" ]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
        CHANGED=1
        log "created $file"
    fi
    chown "$SERVICE_USER:$SERVICE_USER" "$file"
    chmod 0600 "$file"
done

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
render_icecast_xml "$TEMPLATE" "$ETC/secrets" "$(cat /etc/hostname 2>/dev/null || echo localhost)" >"$tmp"
group=icecast
getent group "$group" >/dev/null || group=root
if ! cmp -s "$tmp" "$ICECAST_XML" 2>/dev/null ||
    [ "$(stat -c '%a %U:%G' "$ICECAST_XML")" != "640 root:$group" ]; then
    install -D -m 0640 -o root -g "$group" "$tmp" "$ICECAST_XML"
    CHANGED=1
    log "installed $ICECAST_XML"
fi

if command -v "$SYSTEMCTL" >/dev/null; then
    for unit in icecast2.service recorder-station.service; do
        if ! "$SYSTEMCTL" is-enabled --quiet "$unit" 2>/dev/null; then
            "$SYSTEMCTL" enable --quiet "$unit" 2>/dev/null || "$SYSTEMCTL" enable "$unit"
            CHANGED=1
            log "enabled $unit"
        fi
    done
    if [ -d /run/systemd/system ] && [ "$CHANGED" -eq 1 ]; then
        "$SYSTEMCTL" restart icecast2.service
        # Inactive (its condition fails) until [radio] station = true: not an error here.
        "$SYSTEMCTL" restart recorder-station.service || true
        log "icecast2 and recorder-station restarted"
    fi
fi
[ "$CHANGED" -eq 1 ] || log "nothing to do: Cow Radio is set up"
