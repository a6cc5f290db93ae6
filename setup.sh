#!/usr/bin/env bash
# recorderpi developer set-up on Debian 12 / Raspberry Pi OS (bookworm):
#   ./setup.sh demo   install what the demo needs, then run it (no Pi, microphone or network use)
#   ./setup.sh test   install everything the test suite needs, then run ruff, mypy and the tests
# System packages are installed with apt (as root, or through sudo); Python packages go into
# ./.venv. Extra arguments after `test` are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-demo}
shift || true

demo_packages=(python3 python3-venv libsndfile1 libchromaprint1)
test_packages=(
  "${demo_packages[@]}"
  libportaudio2 libchromaprint-tools pulseaudio pulseaudio-utils espeak-ng sox
  vorbis-tools opus-tools ffmpeg icecast2 liquidsoap syncthing shellcheck systemd nginx-light
  debootstrap yggdrasil socat chrony redis-server fuse3 chromium chromium-driver
  systemd-container strace nftables nmap
  # tests/test_image.py: image/build.sh (arm64 package scripts through qemu-user) and qemu boots
  qemu-user-static binfmt-support dosfstools mtools fdisk qemu-utils qemu-system-x86
  qemu-system-arm
)
# --- compose stack tests (tests/test_compose.py): Docker Engine from Debian; Compose v2 is
# installed from Debian 13's packages by services/docker/install-compose-plugin.sh (the tests
# call it into their own cache; nothing of it goes into the system). ---
test_packages+=(docker.io)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get that waits for another apt/dpkg process (unattended-upgrades on a fresh machine, a
# second setup run) instead of failing at once. DPkg::Lock::Timeout covers dpkg's own locks
# during install, but apt 2.6 gives up at once on the lists lock (update) and the archives lock:
# those are retried here, for up to APT_LOCK_WAIT seconds in all.
APT_LOCK_WAIT=${APT_LOCK_WAIT:-600}
apt_get() {
  local err waited=0 rc
  err=$(mktemp)
  while :; do
    rc=0
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get -o DPkg::Lock::Timeout="$APT_LOCK_WAIT" "$@" 2>"$err" || rc=$?
    if [ "$rc" -eq 0 ] || ! grep -q "Could not get lock" "$err" \
        || [ "$waited" -ge "$APT_LOCK_WAIT" ]; then
      cat "$err" >&2
      rm -f "$err"
      return "$rc"
    fi
    if [ "$waited" -eq 0 ]; then
      echo "waiting for another apt/dpkg process to release its lock ($(head -n1 "$err"))" >&2
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt_get update -q
    apt_get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

make_venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$1"
}

main() {
  case "$mode" in
    demo)
      install_packages "${demo_packages[@]}"
      make_venv .
      exec .venv/bin/recorder demo "$@"
      ;;
    test)
      install_packages "${test_packages[@]}"
      make_venv ".[test]"
      .venv/bin/ruff check recorder tests
      # mypy (settings in pyproject.toml) before the tests, so a type error fails CI.
      .venv/bin/mypy
      exec .venv/bin/python -m pytest -q "$@"
      ;;
    *)
      echo "usage: $0 demo|test [args]" >&2
      exit 2
      ;;
  esac
}

# Sourcing the script (the tests do) defines the functions without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
