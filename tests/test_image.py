"""The recorderpi image: built by image/build.sh from Debian packages, booted under qemu.

Opt-in (it builds a Debian root and boots it under emulation): ``RECORDER_TEST_IMAGE=1``
(.ci/run sets it). Needs root, debootstrap, qemu (``setup.sh test`` installs them).
``RECORDER_IMAGE_ARCH`` picks the build that is booted (default amd64: see image/README.md for
the arm64 and amd64 figures); ``RECORDER_IMAGE_CACHE`` (default /var/cache/recorderpi-ci/image)
keeps the built image between runs, keyed by everything it is made from (locks, image/,
services/, recorder/, pyproject.toml), so a run with no change there boots the cached image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need, need_root
from tests.vm import Guest, have_qemu

REPO = Path(__file__).resolve().parent.parent
ARCH = os.environ.get("RECORDER_IMAGE_ARCH", "amd64")
CACHE = Path(os.environ.get("RECORDER_IMAGE_CACHE", "/var/cache/recorderpi-ci/image"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RECORDER_TEST_IMAGE") != "1",
        reason="opt-in: RECORDER_TEST_IMAGE=1 (image/build.sh + qemu boots, 10-40 minutes cold)",
    ),
]

# What the image is made from: a change to any of it is a new image.
INPUTS = ("image", "services", "recorder", "pyproject.toml")


def _is_input(path: Path, arch: str) -> bool:
    rel = path.relative_to(REPO)
    if "__pycache__" in rel.parts or path.suffix == ".pyc" or path.name == "README.md":
        return False
    if rel.parts[0] == "image":
        # Build outputs, and the locks of the other architecture, are not inputs of this one.
        return rel.parts[1] not in ("out", "cache") and (
            path.suffix != ".lock" or path.stem.endswith(f"-{arch}"))
    return True


def inputs_key(arch: str) -> str:
    h = hashlib.sha256(arch.encode())
    for top in INPUTS:
        base = REPO / top
        files = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and _is_input(p, arch))
        for p in files:
            h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    dir: Path
    image: Path
    kernel: Path
    initrd: Path
    manifest: Path
    build_seconds: float | None  # None: taken from the cache


@pytest.fixture(scope="session")
def built_image() -> Built:
    return ensure_image()


def ensure_image() -> Built:
    """The image of this checkout's inputs for ARCH: from the cache, or built (and cached)."""
    need_root("image/build.sh (debootstrap, chroot)")
    for tool, pkg in (("debootstrap", None), ("mkfs.vfat", "dosfstools"), ("mcopy", "mtools"),
                      ("qemu-img", "qemu-utils"), ("sfdisk", "fdisk")):
        need(tool, pkg)
    if ARCH != "amd64":
        need("qemu-aarch64-static", "qemu-user-static")
    name = f"recorderpi-{_version()}-{ARCH}"
    out = CACHE / f"{ARCH}-{inputs_key(ARCH)}"
    seconds = None
    if not (out / f"{name}.img.sha256").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        t0 = time.monotonic()
        res = subprocess.run([str(REPO / "image/build.sh"), "--arch", ARCH, "--no-compress",
                              "--cache", str(CACHE), "--out", str(part)],
                             capture_output=True, text=True, timeout=3600)
        seconds = time.monotonic() - t0
        assert res.returncode == 0, res.stderr[-5000:]
        # Older images of this architecture are of no further use.
        for old in CACHE.glob(f"{ARCH}-*"):
            if old.is_dir() and old != part:
                shutil.rmtree(old, ignore_errors=True)
        part.rename(out)
    if seconds is not None:
        print(f"\nimage/build.sh --arch {ARCH}: {seconds:.0f} s")
    return Built(out, out / f"{name}.img", out / f"{name}-vmlinuz", out / f"{name}-initrd.img",
                 out / f"{name}.manifest", seconds)


def _version() -> str:
    m = re.search(r'^version = "(.*)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


@pytest.fixture
def guest(built_image: Built, tmp_path: Path) -> Iterator[Guest]:
    binary = have_qemu(ARCH)
    if not binary:
        need("qemu-system-aarch64" if ARCH == "arm64" else "qemu-system-x86_64",
             "qemu-system-arm" if ARCH == "arm64" else "qemu-system-x86")
    # A card 1 GiB larger than the image: first boot grows the recordings partition into it.
    size_mb = built_image.image.stat().st_size // (1 << 20) + 1024
    disk = Guest.make_overlay(built_image.image, tmp_path / "disk.qcow2", size_mb)
    # The ALSA loopback (snd-aloop, in Debian's kernel) stands in for the USB microphone; it is
    # loaded from the kernel command line, the image is not changed for the test.
    g = Guest(ARCH, disk, built_image.kernel, built_image.initrd, tmp_path,
              append="modules-load=snd-aloop")
    try:
        yield g
    finally:
        # The disk is a throw-away overlay: no need to wait for a clean power-off.
        if g.proc is not None:
            g.power_cut()


def _partitions(img: Path) -> list[dict]:
    res = subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(res.stdout)["partitiontable"]["partitions"]


def _probe(img: Path, start_sector: int) -> dict[str, str]:
    res = subprocess.run(["blkid", "-p", "-O", str(start_sector * 512), "-o", "export", str(img)],
                         capture_output=True, text=True, timeout=60)
    return dict(line.split("=", 1) for line in res.stdout.split() if "=" in line)


def test_image_is_built_from_the_lock_with_its_checksum(built_image: Built):
    img = built_image.image
    digest = hashlib.sha256()
    with img.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    sums = (img.parent / (img.name + ".sha256")).read_text().split()
    assert sums == [digest.hexdigest(), img.name]
    # Exactly the locked Debian and Python packages, nothing more or less.
    manifest = built_image.manifest.read_text()
    debian, python = manifest.split("# Python packages")
    locked = {ln for ln in (REPO / f"image/packages-{ARCH}.lock").read_text().splitlines()
              if ln and not ln.startswith("#")}
    assert {ln for ln in debian.splitlines() if ln and not ln.startswith("#")} == locked
    pylocked = {ln for ln in (REPO / f"image/python-{ARCH}.lock").read_text().splitlines()
                if ln and not ln.startswith("#")}
    assert {ln for ln in python.splitlines()[1:] if ln} == pylocked
    # Three partitions: the firmware (FAT), the root and the recordings, the last one last.
    parts = _partitions(img)
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    labels = [_probe(img, p["start"]) for p in parts]
    assert [(lb.get("LABEL"), lb.get("TYPE")) for lb in labels] == [
        ("RASPIFIRM", "vfat"), ("RASPIROOT", "ext4"), ("recorder-data", "ext4")]
    if ARCH == "arm64":
        # The Pi firmware's files, written by raspi-firmware: it boots the root by label.
        files = subprocess.run(["mdir", "-b", "-i", f"{img}@@{parts[0]['start'] * 512}", "::/"],
                               capture_output=True, text=True, timeout=60).stdout
        for name in ("config.txt", "cmdline.txt", "start4.elf", "bcm2711-rpi-4-b.dtb"):
            assert f"::/{name}" in files, files


RECORDER = "/opt/recorderpi/venv/bin/recorder"
ARMED = f"{RECORDER} ctl status --json | grep -q '\"state\": \"idle\"'"
# The units of the appliance that must be active on a booted card (recorder.service aside: it
# waits for its microphone, given below).
UNITS = ("recorder-firstboot.service", "syncthing@recorder.service", "nginx.service",
         "yggdrasil.service", "chrony.service", "avahi-daemon.service",
         "recorder-mesh-time.timer", "recorder-growdata.service", "systemd-networkd.service")


# Polled inside the guest (a condition, not a delay): exits 0 while first boot runs, 2 if it
# already finished; prints its last log line.
FIRSTBOOT_RUNNING = (
    "log=/var/lib/recorderpi/firstboot.log; for i in $(seq 1 6000); do "
    "if test -f /var/lib/recorderpi/firstboot.done; then echo done; exit 2; fi; "
    "if grep -q 'firstboot: starting' $log 2>/dev/null; then tail -n 1 $log; exit 0; fi; "
    "sleep 0.1; done; exit 1")


def _recorded_at_least(seconds: float) -> str:
    return (f"{RECORDER} ctl status --json | python3 -c 'import json, sys; "
            "r = json.load(sys.stdin)[\"audio\"][\"recording\"]; "
            f"sys.exit(0 if r and r[\"seconds\"] >= {seconds} else 1)'")


def _sidecars(guest: Guest) -> list[dict]:
    # One document per line (the sidecars themselves are indented).
    out = guest.run("python3 -c 'import json, sys; [print(json.dumps(json.load(open(f)))) "
                    "for f in sys.argv[1:]]' $(find /srv/recorder/sync -name '*.json' "
                    "-path '*/recordings/*')", check=True).out
    return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]


def _feed_noise(guest: Guest) -> None:
    # The other side of the loopback: what is played on device 1 is captured on device 0.
    guest.run("pidof aplay >/dev/null || { setsid aplay -q -D plughw:Loopback,1,0 -f S16_LE "
              "-r 48000 -c 1 -t raw /dev/urandom </dev/null >/dev/null 2>&1 & }", check=True)


def _identity(guest: Guest) -> list[str]:
    return guest.run(
        "set -e; cat /etc/machine-id; hostname; test -f /var/lib/recorderpi/firstboot.done; "
        "sha256sum < /var/lib/recorderpi/syncthing/cert.pem | cut -c1-16; "
        "sed -n 's/^PrivateKey: *//p; s/.*\"PrivateKey\": *\"\\(.\\{16\\}\\).*/\\1/p' "
        "/etc/yggdrasil/yggdrasil.conf | cut -c1-16; "
        "sed -n 's/^id = \"\\(.*\\)\"/\\1/p' /etc/recorder/recorder.toml | head -n 1",
        check=True).out.split()


def test_image_boots_records_and_survives_a_power_cut(guest: Guest):
    """One card's life, in one emulated machine (two boots: the emulator is slow):
    first boot, every unit, ALSA capture, watchdog, power cut mid-recording, boot again."""
    t0 = time.monotonic()
    shell_s = guest.start()
    # A power cut during first boot: as soon as the guest shows it running (its log has begun,
    # its marker is not there yet). The next boot runs it again to the end.
    during = guest.run(FIRSTBOOT_RUNNING, timeout=1800)
    assert during.rc == 0, f"first boot not seen running before it ended: {during.out}"
    guest.power_cut()
    first_cut_s = time.monotonic() - t0  # what the cut during first boot adds to the test
    guest.start()
    guest.wait_for("test -f /var/lib/recorderpi/firstboot.done", 1800, "first boot")
    firstboot_s = time.monotonic() - t0
    print(f"\npower cut during first boot, after: {during.out.strip().splitlines()[-1]!r}")
    # The recordings partition grew to the end of the (larger) disk, once.
    grown = guest.run("test -f /var/lib/recorderpi/growdata.done && findmnt -bno SIZE "
                      "/srv/recorder", check=True).out
    assert int(grown.split()[-1]) > 1024 * 1024 * 1024, grown  # shipped at 512 MiB

    # The microphone is chosen by name ([audio] source): the loopback card's. Then every unit.
    guest.run("sed -i '0,/^source = /s/^source = .*/source = \"Loopback\"/' "
              "/etc/recorder/recorder.toml && systemctl restart recorder.service", check=True)
    guest.wait_for(ARMED, 900, "recorder armed on the ALSA loopback")
    armed_s = time.monotonic() - t0
    state = guest.run("systemctl is-system-running --wait", timeout=1800).out.strip()
    failed = guest.run("systemctl --failed --no-legend --plain").out
    assert state == "running", (state, failed)
    for unit in (*UNITS, "recorder.service"):
        active = guest.run(f"systemctl is-active {unit}").out.strip()
        log = guest.run(f"journalctl -b -u {unit} --no-pager | tail -20").out
        if unit == "recorder-growdata.service" and active == "inactive":
            # It grew the partition in the boot the power cut ended (checked above), so this
            # boot skips it by its own condition, as every later boot does.
            cond = guest.run(f"systemctl show -p ConditionResult --value {unit}").out.strip()
            assert cond == "no", (unit, active, cond, log)
            continue
        assert active == "active", (unit, active, log)
    # First boot: a machine id, the device id (from the MAC) pinned in the config and in the
    # hostname, Syncthing and yggdrasil keys, made on this machine.
    ident = _identity(guest)
    machine_id, hostname, device_id = ident[0], ident[1], ident[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id), ident
    assert hostname == f"recorder-{device_id}" and re.fullmatch(r"[0-9a-f]{12}", device_id), ident
    assert len(ident) == 5, ident  # both keys present
    # PortAudio on ALSA, no PulseAudio anywhere; doctor is content.
    assert guest.run("pidof pulseaudio || dpkg -s pulseaudio").rc != 0
    doctor = guest.run(f"runuser -u recorder -- {RECORDER} doctor --json")
    report = json.loads(doctor.out[doctor.out.index("{"):])
    assert doctor.rc == 0 and report["healthy"], doctor.out

    # A recording from the loopback, published with its Audio ID.
    _feed_noise(guest)
    guest.run(f"{RECORDER} ctl start", check=True)
    guest.wait_for(_recorded_at_least(4), 300, "4 s recorded")
    guest.run(f"{RECORDER} ctl stop", check=True)
    guest.wait_for("ls /srv/recorder/sync/*/recordings/*/*/*/*.json", 300,
                   "the recording published")
    [first] = _sidecars(guest)
    assert first["duration"] >= 4 and not first["recovered"], first
    assert first["audio_id"] and re.fullmatch(r"[0-9a-f]{64}", first["sha256"]), first

    # A hung service (SIGSTOP) is killed by the watchdog and restarted; the journal says so.
    pid = guest.run("systemctl show -p MainPID --value recorder.service", check=True).out.strip()
    guest.run(f"kill -STOP {pid}", check=True)
    guest.wait_for("journalctl -u recorder.service -b --no-pager | grep -q 'Watchdog timeout'",
                   300, "the watchdog's kill in the journal")
    guest.wait_for(f"test \"$(systemctl show -p MainPID --value recorder.service)\" != {pid} "
                   f"&& {ARMED}", 900, "the service restarted and armed")

    # A power cut in the middle of a recording: the emulator is killed, the disk keeps only
    # what the guest flushed (cache=none).
    guest.run(f"{RECORDER} ctl start", check=True)
    t_start = float(guest.run("date +%s.%N", check=True).out.split()[-1])
    guest.wait_for(_recorded_at_least(7), 300, "7 s recorded")
    host_before = time.time()
    t_cut = float(guest.run("date +%s.%N", check=True).out.split()[-1])
    guest.power_cut()
    # The cut came after the guest read its clock, by at most this much.
    cut_latency = time.time() - host_before

    # Boot again: file systems clean, the recording recovered, the database intact, the same
    # identity (first boot not run again), nothing half-written, nothing twice.
    t1 = time.monotonic()
    guest.start()
    guest.wait_for(ARMED, 1800, "recorder armed after the power cut")
    rearmed_s = time.monotonic() - t1
    assert _identity(guest) == ident
    fsck = guest.run("journalctl -b -o cat -u 'systemd-fsck*' --no-pager; "
                     "systemctl is-failed -q 'systemd-fsck*' && echo FSCK-FAILED; "
                     "dmesg | grep -i 'ext4-fs error' || true").out
    assert "FSCK-FAILED" not in fsck and "error" not in fsck.lower(), fsck
    assert guest.run("journalctl -b -u recorder-firstboot.service -o cat | "
                     "grep -q 'firstboot: starting'").rc != 0
    docs = _sidecars(guest)
    recovered = [d for d in docs if d["recovered"]]
    assert len(docs) == 2 and len(recovered) == 1, docs
    rec = recovered[0]
    lost = (t_cut - t_start) + rec["preroll"] - rec["duration"]
    flush = 2.0  # [storage] flush_seconds of the shipped config
    print(f"\nimage {ARCH}: shell {shell_s:.0f} s, first boot done {firstboot_s:.0f} s, armed "
          f"{armed_s:.0f} s after power-on; after the cut armed again in {rearmed_s:.0f} s; "
          f"recorded {t_cut - t_start:.2f} s (+{rec['preroll']:.2f} s pre-roll), recovered "
          f"{rec['duration']:.2f} s: lost {lost:.2f} s to {lost + cut_latency:.2f} s "
          f"(the cut came {cut_latency:.2f} s at most after the last clock reading)")
    assert lost <= flush + 0.5, (lost, rec)
    assert rec["audio_id"] and rec["sha256"] != first["sha256"]
    half = guest.run("find /srv/recorder/sync -name '*.partial' -o -name '.*.tmp*' "
                     "-o -name '*.sync-conflict*'").out.strip()
    assert half == "", half
    ogg = guest.run("for f in $(find /srv/recorder/sync -name '*.ogg'); do "
                    "ogginfo -q \"$f\" >/dev/null || echo BAD $f; done; "
                    "find /srv/recorder/sync -name '*.ogg' | wc -l").out.split()
    assert ogg == ["2"], ogg
    integrity = guest.run(
        "/opt/recorderpi/venv/bin/python3 -c \"import sqlite3; c = sqlite3.connect("
        "'file:/srv/recorder/state/recorder.db?mode=ro', uri=True); "
        "print(c.execute('pragma integrity_check').fetchone()[0])\"", check=True).out
    assert integrity.strip().endswith("ok"), integrity
    ids = [d["recording_id"] for d in docs]
    assert len(set(ids)) == len(ids)

    # A power cut mid-publish: the recording stopped (finalised into staging), its Audio ID
    # and sidecar not written yet. Boot again: published once, whole, nothing twice.
    t2 = time.monotonic()
    _feed_noise(guest)
    guest.run(f"{RECORDER} ctl start", check=True)
    guest.wait_for(_recorded_at_least(6), 300, "6 s recorded")
    at_cut = guest.run(f"{RECORDER} ctl stop >/dev/null && find /srv/recorder/sync -name '*.json' "
                       "-path '*/recordings/*' | wc -l", check=True).out.split()[-1]
    guest.power_cut()
    assert at_cut == "2", f"already published when the power was cut ({at_cut} sidecars)"
    guest.start()
    guest.wait_for(ARMED, 1800, "recorder armed after the cut mid-publish")
    guest.wait_for("test $(find /srv/recorder/sync -name '*.json' -path '*/recordings/*' "
                   "| wc -l) -ge 3", 600, "the interrupted recording published after the cut")
    docs = _sidecars(guest)
    ids = [d["recording_id"] for d in docs]
    assert len(docs) == 3 and len(set(ids)) == 3, docs
    assert len({d["sha256"] for d in docs}) == 3 and all(d["audio_id"] for d in docs), docs
    before_cut = {rec["recording_id"], first["recording_id"]}
    last = [d for d in docs if d["recording_id"] not in before_cut]
    assert last and last[0]["duration"] >= 6 - flush, last
    again = guest.run("find /srv/recorder/sync -name '*.partial' -o -name '.*.tmp*' "
                      "-o -name '*.sync-conflict*'; find /srv/recorder/sync -name '*.ogg' | wc -l; "
                      "/opt/recorderpi/venv/bin/python3 -c \"import sqlite3; c = sqlite3.connect("
                      "'file:/srv/recorder/state/recorder.db?mode=ro', uri=True); "
                      "print(c.execute('pragma integrity_check').fetchone()[0])\"",
                      check=True).out.split()
    assert again == ["3", "ok"], again
    print(f"image {ARCH}: the cut during first boot came {first_cut_s:.0f} s after power-on; "
          f"the cut mid-publish and its boot took {time.monotonic() - t2:.0f} s")
