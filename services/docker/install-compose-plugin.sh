#!/bin/bash
# Docker Compose v2 on Debian 12: bookworm has only the old Python docker-compose 1.29, which
# this stack's compose.yaml is too new for. Debian 13's docker-compose (2.26) and docker-buildx
# (0.13) packages are static Go binaries that run on Debian 12: this fetches them from the same
# Debian mirror with a private apt state (the system's package lists stay bookworm-only) and
# installs the two CLI plugins.
#
#   services/docker/install-compose-plugin.sh [DIR]   # default /usr/local/lib/docker/cli-plugins
#
# DIR=~/.docker/cli-plugins installs for one user (no root needed). RECORDER_DEBIAN_MIRROR
# chooses the mirror (default http://deb.debian.org/debian).
set -euo pipefail
dest=${1:-/usr/local/lib/docker/cli-plugins}
mirror=${RECORDER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ -x "$dest/docker-compose" ] && [ -x "$dest/docker-buildx" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/x"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
  >"$work/sources.list"
apt_private() {
  apt-get -q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}
apt_private update >/dev/null
(cd "$work" && apt_private download docker-compose docker-buildx >/dev/null)
for deb in "$work"/docker-compose_*.deb "$work"/docker-buildx_*.deb; do
  dpkg-deb -x "$deb" "$work/x"
done
mkdir -p "$dest"
for plugin in docker-compose docker-buildx; do
  install -m 0755 "$work/x/usr/libexec/docker/cli-plugins/$plugin" "$dest/$plugin.new"
  mv -f "$dest/$plugin.new" "$dest/$plugin"
done
echo "installed docker compose $("$dest/docker-compose" version --short) into $dest"
