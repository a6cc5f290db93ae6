#!/usr/bin/env bash
# recorderpi developer set-up on Debian 12 / Raspberry Pi OS (bookworm):
#   ./setup.sh demo   install what the demo needs, then run it (no Pi, microphone or network use)
#   ./setup.sh test   install everything the test suite needs, then run ruff and the tests
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
  vorbis-tools opus-tools ffmpeg icecast2 syncthing shellcheck systemd nginx-light debootstrap
  yggdrasil socat chrony chromium chromium-driver
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
  fi
}

make_venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$1"
}

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
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: $0 demo|test [args]" >&2
    exit 2
    ;;
esac
