"""The native install, booted: `services/install.sh --root` into a fresh Debian 12 root, then that
root booted under real systemd (`systemd-nspawn --boot`), once per install variant the README
offers: plain, `--with-icecast` (the station on), and papad beside (`[papad] api = "papad"`).

What it proves, on a running system with systemd as PID 1: first boot provisions the device
(Syncthing keys and API key, web password, hostname, the device's folder); every unit of the
appliance comes up and stays up over several watchdog periods (no restart, no failed unit);
`recorder ctl status` answers, a recording made through `recorder ctl` is published; `recorder
doctor` is sane; no unit was ever killed by its seccomp filter; and every system call
recorder.service makes under its real unit (traced with strace from the host through start,
record, stop, status, live), and Liquidsoap under recorder-station.service (on the air, a live
switch), is one the unit's SystemCallFilter allows; in the papad variant the recording reaches
a real papad (the kit's upstream server) from the booted service.

What the container changes, and why (the rest is the install as a user gets it):
- the audio source is the package's demo clip (`file:`, replayed like a microphone): there is no
  sound card in the container, and the service says READY only after its first audio block;
- the device id is pinned in the config: `--private-network` leaves only loopback, which has no
  MAC address to derive the id from (firstboot's MAC rule is tested in test_deploy.py);
- /dev/net/tun is a node made for the test with mode 0666, as udev makes it on a Pi, bound into
  the container so yggdrasil runs (the host's own node may be 0600);
- chrony does not run: a container has no CAP_SYS_TIME, so its unit's condition skips it (it
  would set the host's clock otherwise).

Opt-in like the install test (it downloads Debian and PyPI packages): ``RECORDER_TEST_INSTALL=1``.
The Debian roots are cached by package list (tests/nspawn.py), so a second run only installs and
boots. Needs root, debootstrap, systemd-nspawn (systemd-container), nsenter, strace, socat and
the papad kit (``$RECORDER_PAPAD_KIT``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests import nspawn
from tests.conftest import need, wait_until

REPO = Path(__file__).resolve().parent.parent
DEVICE = "boottest"
WATCHDOG_PERIODS = 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RECORDER_TEST_INSTALL") != "1",
        reason="opt-in: RECORDER_TEST_INSTALL=1 (debootstrap + install.sh + systemd-nspawn boot)",
    ),
]

COMMON_UNITS = ("recorder.service", "syncthing@recorder.service", "nginx.service",
                "yggdrasil.service", "avahi-daemon.service")
VARIANTS = {
    "plain": ((), COMMON_UNITS),
    "with-icecast": (("--with-icecast",),
                     (*COMMON_UNITS, "icecast2.service", "recorder-station.service")),
    # The plain install registering its recordings with a real papad beside it (README: the
    # compose `papad` profile on the Pi; here the papad kit's upstream server on the host,
    # reached at the config's default http://127.0.0.1:8000 through a relay into the
    # container's network namespace).
    "papad-beside": ((), COMMON_UNITS),
}


def _packages(variant: str) -> list[list[str]]:
    layers = [nspawn.install_sh_packages("APT_PACKAGES", "MESH_PACKAGES")]
    if variant == "with-icecast":
        layers.append(nspawn.install_sh_packages("RADIO_PACKAGES"))
    return layers


def _configure(root: Path, variant: str, pin_id: bool = True) -> None:
    """The container's changes to the installed config (see the module docstring). Without
    `pin_id` the device id stays empty, so first boot fails (the container has no MAC)."""
    cfg = root / "etc/recorder/recorder.toml"
    clip = next((root / "opt/recorderpi/venv/lib").glob("python3*/site-packages/recorder/data/"
                                                       "demo-speech.ogg"))
    text = cfg.read_text()
    if pin_id:
        text = _pin_id(text)
    text = text.replace('\nsource = "USB"\n', f'\nsource = "file:/{clip.relative_to(root)}"\n', 1)
    if variant == "with-icecast":
        # Cow Radio on: Liquidsoap's station runs, and its secrets become required.
        text = text.replace("\nstation = false\n", "\nstation = true\n", 1)
    if variant == "papad-beside":
        text = text.replace('\napi = "none"\n', '\napi = "papad"\n', 1)
        assert '\nurl = "http://127.0.0.1:8000"\n' in text and '\nauth = "token"\n' in text
    assert (f'id = "{DEVICE}"' in text or not pin_id) and "demo-speech.ogg" in text
    cfg.write_text(text)


def _pin_id(text: str) -> str:
    return text.replace('\nid = ""\n', f'\nid = "{DEVICE}"\n', 1)


def _write_secret(root: Path, name: str, value: str) -> None:
    """A secret as the field guide has a user make it: 0600, owned by the recorder user."""
    uid = gid = -1
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "recorder":
            uid, gid = int(f[2]), int(f[3])
    path = root / "etc/recorder/secrets" / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    os.chown(path, uid, gid)


@contextlib.contextmanager
def _papad_relay(c: nspawn.Container, url: str, tmp_path: Path) -> Iterator[None]:
    """127.0.0.1:8000 inside the container's network namespace, relayed to `url` on the host's
    loopback."""
    with _relay(c, 8000, urlsplit(url).port or 80, tmp_path / "papad.sock"):
        yield


@contextlib.contextmanager
def _relay(c: nspawn.Container, inner_port: int, host_port: int, sock: Path) -> Iterator[None]:
    """127.0.0.1:`inner_port` inside the container's network namespace, relayed to
    127.0.0.1:`host_port` on the host through a Unix socket (a path reaches across network
    namespaces)."""
    socat = need("socat")
    host = subprocess.Popen([socat, f"UNIX-LISTEN:{sock},fork,mode=600",
                             f"TCP:127.0.0.1:{host_port}"], stderr=subprocess.DEVNULL)
    inner = None
    try:
        wait_until(sock.exists, 30, 0.1, what="the relay's socket")
        inner = subprocess.Popen(["nsenter", f"--target={c.leader}", "--net", "--", socat,
                                  f"TCP-LISTEN:{inner_port},bind=127.0.0.1,fork,reuseaddr",
                                  f"UNIX-CONNECT:{sock}"], stderr=subprocess.DEVNULL)
        yield
    finally:
        for proc in (inner, host):
            if proc is not None:
                proc.terminate()
                proc.wait(30)


def _tun_node(tmp_path: Path) -> Path:
    node = tmp_path / "tun"
    subprocess.run(["mknod", "-m", "0666", str(node), "c", "10", "200"], check=True)
    node.chmod(0o666)
    return node


def _unit_report(c: nspawn.Container, units: tuple[str, ...]) -> str:
    return "\n".join(f"{u}: {c.systemctl_show(u, 'ActiveState', 'SubState', 'NRestarts', 'Result')}"
                     for u in units) + "\n" + c.run("systemctl", "--failed", "--no-pager").stdout


def _stable(c: nspawn.Container, units: tuple[str, ...]) -> None:
    """Every unit active with no restart, until recorder.service has run through
    WATCHDOG_PERIODS of its watchdog (and the others as long)."""
    show = c.systemctl_show("recorder.service", "WatchdogUSec")
    watchdog = _seconds(show["WatchdogUSec"])
    assert watchdog > 0, show

    def settled() -> bool:
        for unit in units:
            s = c.systemctl_show(unit, "ActiveState", "NRestarts", "ActiveEnterTimestampMonotonic")
            assert s["ActiveState"] in ("active", "activating"), _unit_report(c, units)
            assert s["NRestarts"] == "0", f"{unit} restarted\n" + _unit_report(c, units) + \
                c.journal("-u", unit, "-n", "40")
            if s["ActiveState"] != "active":
                return False
            since = int(s["ActiveEnterTimestampMonotonic"]) / 1e6
            if time.clock_gettime(time.CLOCK_MONOTONIC) - since < WATCHDOG_PERIODS * watchdog:
                return False
        return True

    wait_until(settled, 300, 1.0, what=f"every unit up for {WATCHDOG_PERIODS} watchdog periods",
               detail=lambda: _unit_report(c, units))


def _seconds(text: str) -> float:
    """systemd's time span ("10s", "1min 30s") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(us|ms|min|s|h)", text))


def _trace_unit(c: nspawn.Container, tmp_path: Path, unit: str, command: str,
                drive: Callable[[], None]) -> dict[str, int]:
    """Restart `unit` under its real unit file with strace (from the host) following its main
    process from the first instruction of `command` (its ExecStart), run `drive`, stop the
    unit, and return how often it made each system call."""
    strace = need("strace")
    dropin = c.root / f"etc/systemd/system/{unit}.d/zz-boot-test-trace.conf"
    dropin.parent.mkdir(exist_ok=True)
    # The main process stops itself before exec, so strace attaches before the program runs;
    # the sandbox and the filter are already in place then. "$$$$" is "$$" to the shell.
    dropin.write_text(f"[Service]\nExecStart=\nExecStart=/bin/sh -c 'kill -STOP $$$$; exec "
                      f"{command}'\n")
    c.run("systemctl", "daemon-reload", check=True)
    c.run("systemctl", "restart", "--no-block", unit, check=True)
    out = tmp_path / f"{unit}.strace"
    tracer = None
    try:
        def stopped() -> int:
            pid = int(c.systemctl_show(unit, "MainPID")["MainPID"] or 0)
            host = c.host_pid(pid) if pid else 0
            if host and Path(f"/proc/{host}/stat").read_text().split(") ")[1][0] == "T":
                return host
            return 0

        host = wait_until(stopped, 120, 0.2, what=f"{unit}'s main process stopped")
        tracer = subprocess.Popen([strace, "-f", "-qq", "-o", str(out), "-p", str(host)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: re.search(r"^TracerPid:\s*[1-9]", Path(f"/proc/{host}/status")
                                     .read_text(), re.M), 30, 0.1, what="strace attached")
        os.kill(host, signal.SIGCONT)
        wait_until(lambda: c.systemctl_show(unit, "ActiveState")["ActiveState"] == "active",
                   300, 0.5, what=f"{unit} up under strace",
                   detail=lambda: c.journal("-u", unit, "-n", "30"))
        drive()
        c.run("systemctl", "stop", unit, check=True, timeout=120)
        tracer.wait(60)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
        dropin.unlink(missing_ok=True)
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "start", "--no-block", unit)
    counts: dict[str, int] = {}
    for line in out.read_text(errors="replace").splitlines():
        m = re.match(r"^\d+\s+([a-z_][a-z0-9_]*)\(", line)
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    assert counts.get("execve"), f"strace saw no exec: the trace did not follow {unit}"
    return counts


def _check_filter(c: nspawn.Container, unit: str, counts: dict[str, int]) -> None:
    """Every call in `counts` is one the unit's SystemCallFilter allows (systemctl shows the
    filter resolved to call names: groups expanded, a ~deny list taken off the allow list)."""
    allowed = set(c.systemctl_show(unit, "SystemCallFilter")["SystemCallFilter"].split())
    assert allowed and not any(s.startswith("~") for s in allowed), allowed
    denied = {s: n for s, n in counts.items() if s not in allowed}
    assert not denied, f"{unit} made calls its filter refuses (EPERM): {denied}"


def _published(c: nspawn.Container) -> int:
    res = c.run("find", f"/srv/recorder/sync/{DEVICE}/recordings", "-name", "*.ogg")
    return len(res.stdout.split())


def _on_air(c: nspawn.Container) -> bool:
    return c.run("/opt/recorderpi/venv/bin/recorder", "radio", "status",
                 user="recorder").returncode == 0


def _ctl(c: nspawn.Container, *args: str) -> subprocess.CompletedProcess:
    return c.run("/opt/recorderpi/venv/bin/recorder", "ctl", *args, user="recorder", timeout=60)


def _exercise(c: nspawn.Container, variant: str, published_before: int) -> None:
    """What a volunteer does: status, record a few seconds, stop (it publishes), live."""
    status = _ctl(c, "status", "--json")
    assert status.returncode == 0, status.stderr
    json.loads(status.stdout)
    start = _ctl(c, "start")
    assert start.returncode == 0, start.stderr
    time.sleep(2.0)  # the length of the recording itself, not a wait for a condition
    stop = _ctl(c, "stop")
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: _published(c) > published_before, 120, 0.5, what="the recording published",
               detail=lambda: c.journal("-u", "recorder.service", "-n", "30"))
    if variant == "with-icecast":
        for state in ("on", "off"):
            live = _ctl(c, "live", state)
            assert live.returncode == 0, live.stderr
    else:  # the radio is off and its secret was never made: refused in one line, service up
        live = _ctl(c, "live", "on")
        assert live.returncode != 0 and "radio.password_file" in live.stderr, live.stderr
    assert _ctl(c, "status").returncode == 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_native_install_boots_and_runs(tmp_path, variant, record_property, request):
    if os.geteuid() != 0:
        pytest.fail("the boot test needs root (debootstrap, chroot, systemd-nspawn)")
    need("debootstrap")
    need("systemd-nspawn", "systemd-container")
    need("nsenter", "util-linux")
    need("strace")
    options, units = VARIANTS[variant]
    papad = request.getfixturevalue("papad_fresh")("upstream") if variant == "papad-beside" \
        else None
    t0 = time.monotonic()
    timing: dict[str, Any] = {}
    base = nspawn.debian_root(_packages(variant))
    root = nspawn.copy_root(base, tmp_path / "root")
    t_root = time.monotonic()
    res = subprocess.run(["bash", str(REPO / "services/install.sh"), "--root", str(root),
                          "--no-apt", *options], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    _configure(root, variant)
    if variant == "plain":  # a code that is no code, left on the boot partition
        (root / "boot/firmware").mkdir(parents=True, exist_ok=True)
        (root / "boot/firmware/recorderpi-join.txt").write_text("RPI1-NOT-A-CODE\n")
    if papad is not None:
        _write_secret(root, "papad-token", papad.token or "")
    t_install = time.monotonic()

    c = nspawn.Container(root, tmp_path / "console.log", name=f"rp-{variant}"[:60],
                         extra_args=[f"--bind={_tun_node(tmp_path)}:/dev/net/tun"])
    c.start()
    with contextlib.ExitStack() as stack:
        if papad is not None:
            stack.enter_context(_papad_relay(c, papad.url, tmp_path))
        stack.callback(lambda: timing.setdefault("rc", c.stop()))
        _boot_checks(c, root, tmp_path, variant, units, papad, timing)
    rc = timing.pop("rc")
    t_end = time.monotonic()
    timing.update(total=round(t_end - t0, 1), root=round(t_root - t0, 1),
                  install=round(t_install - t_root, 1))
    record_property("timing", json.dumps(timing))
    print(f"boot test {variant}: {timing}")
    assert rc == 0, (tmp_path / "console.log").read_text(errors="replace")[-3000:]
    mounts = Path("/proc/mounts").read_text()
    assert str(root) not in mounts, "a mount was left behind"


def _boot_checks(c: nspawn.Container, root: Path, tmp_path: Path, variant: str,
                 units: tuple[str, ...], papad: Any, timing: dict[str, Any]) -> None:
    t_start = time.monotonic()
    state = c.wait_booted(600)
    t_boot = time.monotonic()
    timing["boot"] = round(t_boot - t_start, 1)
    assert state == "running", _unit_report(c, units)
    # First boot made this card a distinct device.
    fb = c.systemctl_show("recorder-firstboot.service", "ActiveState", "Result")
    assert fb == {"ActiveState": "active", "Result": "success"}, c.journal(
        "-u", "recorder-firstboot.service")
    assert (root / "var/lib/recorderpi/firstboot.done").is_file()
    assert (root / "var/lib/recorderpi/syncthing/cert.pem").is_file()
    if variant == "plain":  # the bad join code: said in one line, kept aside, first boot done
        fb_log = c.journal("-u", "recorder-firstboot.service", "-o", "cat")
        errors = [ln for ln in fb_log.splitlines() if ln.startswith("recorder: error:")]
        assert len(errors) == 1 and "code" in errors[0], fb_log
        assert "warning: recorder mesh join failed" in fb_log, fb_log
        assert not (root / "boot/firmware/recorderpi-join.txt").exists()
        assert (root / "boot/firmware/recorderpi-join.txt.failed").is_file()
    for secret in ("syncthing-api-key", "web-password"):
        assert (root / "etc/recorder/secrets" / secret).stat().st_mode & 0o077 == 0
    assert c.run("hostname").stdout.strip() == f"recorder-{DEVICE}"
    assert (root / f"srv/recorder/sync/{DEVICE}/.stignore").is_file()
    assert (root / "etc/yggdrasil/yggdrasil.conf").is_file()
    # chrony: skipped by its own condition in a container (no CAP_SYS_TIME), not failed.
    chrony = c.systemctl_show("chrony.service", "ActiveState", "ConditionResult")
    assert chrony["ActiveState"] == "inactive" and chrony["ConditionResult"] == "no", chrony

    status = _ctl(c, "status")
    assert status.returncode == 0 and status.stdout.strip(), status.stderr
    # The mesh-time refresh its timer starts after 2 minutes, started now: it runs clean. It
    # asks Syncthing's REST API, which Syncthing (Type=simple: "started" before it listens)
    # opens a moment after the boot is "running"; two minutes after boot it always has.
    def syncthing_answers() -> bool:
        probe = c.run("/opt/recorderpi/venv/bin/python", "-c", PROBE_8384, timeout=60)
        return probe.returncode == 0

    wait_until(syncthing_answers, 120, 0.5, what="Syncthing's REST API in the booted root",
               detail=lambda: c.run("systemctl", "status", "--no-pager",
                                    "syncthing@recorder.service").stdout
               + c.journal("-u", "syncthing@recorder.service")[-3000:]
               + c.run("/opt/recorderpi/venv/bin/python", "-c", PROBE_8384).stderr[-1500:])
    mt = c.run("systemctl", "start", "recorder-mesh-time.service", timeout=120)
    assert mt.returncode == 0, mt.stderr + c.journal("-u", "recorder-mesh-time.service")

    _stable(c, units)
    timing["stable"] = round(time.monotonic() - t_boot, 1)

    if variant == "with-icecast":  # Liquidsoap connects to Icecast a while after it starts
        wait_until(lambda: _on_air(c), 300, 1.0, what="the station on the air",
                   detail=lambda: c.journal("-u", "recorder-station.service", "-n", "30"))
    doctor = c.run("/opt/recorderpi/venv/bin/recorder", "doctor", "--json", user="recorder")
    assert "Traceback" not in doctor.stderr, doctor.stderr
    checks = {ch["name"]: ch for ch in json.loads(doctor.stdout)["checks"]}
    for name in ("config", "audio device", "storage", "free space", "staging"):
        assert checks[name]["ok"], checks[name]
    failed = {n for n, ch in checks.items() if not ch["ok"]}
    # The clock may be unsynchronised in a container (no time daemon runs in it); nothing
    # else may fail.
    assert failed <= {"clock"}, {n: checks[n] for n in failed}

    before = _published(c)
    counts = _trace_unit(c, tmp_path, "recorder.service", "/opt/recorderpi/venv/bin/recorder run",
                         lambda: _exercise(c, variant, before))
    _check_filter(c, "recorder.service", counts)
    timing["syscalls"] = len(counts)
    if variant == "with-icecast":
        # Liquidsoap under recorder-station.service: on the air, a live switch and back.
        def on_air() -> None:
            wait_until(lambda: _on_air(c), 300, 1.0, what="the station on the air",
                       detail=lambda: c.journal("-u", "recorder-station.service", "-n", "30"))
            for state in ("on", "off"):
                assert _ctl(c, "live", state).returncode == 0

        station = _trace_unit(c, tmp_path, "recorder-station.service",
                              "/usr/bin/liquidsoap /run/recorder-station/station.liq", on_air)
        _check_filter(c, "recorder-station.service", station)
        timing["station_syscalls"] = len(station)

    # Back under its own unit after the trace, and nothing was ever killed by seccomp.
    wait_until(lambda: c.systemctl_show("recorder.service", "ActiveState")["ActiveState"]
               == "active", 300, 0.5, what="recorder.service back up")
    if papad is not None:  # the recording reached papad through the outbox
        wait_until(papad.all_media, 180, 1.0, what="the recording registered with papad",
                   detail=lambda: c.journal("-u", "recorder.service", "-n", "30"))
    journal = c.journal()
    for bad in ("status=31/SYS", "code=killed, status=31", "Bad system call"):
        assert bad not in journal, [ln for ln in journal.splitlines() if bad in ln][:5]
    assert c.run("systemctl", "is-system-running").stdout.strip() == "running", \
        _unit_report(c, units)


# Whether Syncthing's GUI/REST address accepts a connection (what `recorder` needs of it first).
PROBE_8384 = "import socket; socket.create_connection(('127.0.0.1', 8384), 5).close()"

# The appliance's own services, held by a failed first boot (each has the marker as condition).
HELD = ("recorder.service", "syncthing@recorder.service", "yggdrasil.service",
        "recorder-mesh-time.service")


@pytest.fixture
def inviter(tmp_path: Path) -> Iterator[Any]:
    """A mesh member on the host: a real Syncthing with the service's mesh keeper (what
    `recorder run` starts) in-process, and `invite()` (`recorder mesh invite` through the CLI,
    the code naming the given sync address)."""
    from tests.syncthing_harness import Instance
    from tests.test_mesh_pairing import _cfg, _cli, make_keeper

    inst = Instance(need("syncthing"), tmp_path / "inviter", "inviter", "inviter1")
    inst.start()
    keeper = None
    try:
        setup = _cli(inst, "mesh", "setup")
        assert setup.returncode == 0, setup.stderr
        keeper = make_keeper(_cfg(inst), inst.client)
        keeper.start()

        def invite(address: str) -> str:
            res = _cli(inst, "mesh", "invite", "--json", "--address", address)
            assert res.returncode == 0, res.stderr
            return str(json.loads(res.stdout)["code"])

        inst.invite = invite  # type: ignore[attr-defined]
        yield inst
    finally:
        if keeper is not None:
            keeper.stop()
        inst.stop()


def test_a_failed_first_boot_holds_the_services_then_joins_with_the_boot_code(tmp_path, inviter):
    """First boot fails (here: no network interface with a MAC address to derive the device id
    from, the container's only interface being loopback): the appliance's services are skipped
    with the unmet condition named in one line, none of them restarts in a loop, and the join
    code left on the boot partition is kept. Once the cause is fixed, first boot run again
    joins the mesh with that code (a real inviter: Syncthing and the mesh keeper on the host,
    its sync port relayed into the container) and deletes it, the target started brings
    everything up, and the inviter and the booted device pair."""
    if os.geteuid() != 0:
        pytest.fail("the boot test needs root (debootstrap, chroot, systemd-nspawn)")
    need("debootstrap")
    need("systemd-nspawn", "systemd-container")
    need("nsenter", "util-linux")
    root = nspawn.copy_root(nspawn.debian_root(_packages("plain")), tmp_path / "root")
    res = subprocess.run(["bash", str(REPO / "services/install.sh"), "--root", str(root),
                          "--no-apt"], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    _configure(root, "plain", pin_id=False)
    # The code as a volunteer leaves it on the card's FAT partition (a CRLF line, say).
    port = inviter.sync_port
    join_file = root / "boot/firmware/recorderpi-join.txt"
    join_file.parent.mkdir(parents=True, exist_ok=True)
    join_file.write_text(inviter.invite(f"tcp://127.0.0.1:{port}") + "\r\n")
    c = nspawn.Container(root, tmp_path / "console.log", name="rp-firstboot-fails",
                         extra_args=[f"--bind={_tun_node(tmp_path)}:/dev/net/tun"])
    c.start()
    try:
        assert c.wait_booted(600) == "degraded", _unit_report(c, HELD)
        fb = c.systemctl_show("recorder-firstboot.service", "ActiveState", "Result")
        assert fb == {"ActiveState": "failed", "Result": "exit-code"}, fb
        fb_log = c.journal("-u", "recorder-firstboot.service", "-o", "cat")
        assert "error: no network interface with a MAC address" in fb_log, fb_log
        assert not (root / "var/lib/recorderpi/firstboot.done").exists()
        for unit in HELD:
            s = c.systemctl_show(unit, "ActiveState", "SubState", "ConditionResult", "NRestarts")
            assert s == {"ActiveState": "inactive", "SubState": "dead", "ConditionResult": "no",
                         "NRestarts": "0"}, (unit, s, c.journal("-u", unit, "-o", "cat"))
        # One line says why, in the journal and in `systemctl status`; no restart is scheduled.
        journal = c.journal("-u", "recorder.service", "-o", "cat")
        why = [ln for ln in journal.splitlines() if "firstboot.done" in ln]
        assert len(why) == 1 and "condition" in why[0], journal
        assert "Scheduled restart" not in journal and "recorder: error" not in journal, journal
        status = c.run("systemctl", "status", "--no-pager", "recorder.service").stdout
        assert "ConditionPathExists=/var/lib/recorderpi/firstboot.done was not met" in status, \
            status
        assert c.run("systemctl", "list-jobs", "--no-legend").stdout.strip() == ""
        assert join_file.is_file()  # not used by a first boot that failed before joining

        # Fixed (the device id given by hand), first boot again, then the services.
        cfg = root / "etc/recorder/recorder.toml"
        cfg.write_text(_pin_id(cfg.read_text()))
        with _relay(c, port, port, tmp_path / "sync.sock"):
            again = c.run("systemctl", "start", "recorder-firstboot.service", timeout=300)
            fb_log = c.journal("-u", "recorder-firstboot.service", "-o", "cat")
            assert again.returncode == 0, fb_log
            assert "joined the mesh with the code from /boot/firmware/recorderpi-join.txt" \
                in fb_log, fb_log
            assert not join_file.exists() and not join_file.with_name(
                join_file.name + ".failed").exists()
            c.run("systemctl", "start", "multi-user.target", check=True, timeout=300)
            wait_until(lambda: all(c.systemctl_show(u, "ActiveState")["ActiveState"] == "active"
                                   for u in HELD[:3]),
                       300, 1.0, what="the services up after first boot succeeded",
                       detail=lambda: _unit_report(c, HELD))
            assert _ctl(c, "status").returncode == 0
            # Paired: the inviter holds the booted device's folder and is connected to it.
            wait_until(lambda: _paired(inviter), 300, 1.0,
                       what="the inviter paired with the booted device",
                       detail=lambda: c.run("/opt/recorderpi/venv/bin/recorder", "mesh",
                                            "status", user="recorder").stdout
                       + c.journal("-u", "recorder.service", "-n", "20", "-o", "cat"))
    finally:
        rc = c.stop()
    assert rc == 0, (tmp_path / "console.log").read_text(errors="replace")[-3000:]


def _paired(inviter: Any) -> bool:
    folders = {f["id"] for f in inviter.client.folders()}
    if f"recorderpi-{DEVICE}" not in folders:
        return False
    conns = inviter.client.connections()["connections"]
    return any(v.get("connected") for k, v in conns.items()
               if k != inviter.device_id)
