"""An emulated machine booting the recorderpi image, for tests (qemu, TCG: no KVM here).

The guest boots the image's own kernel and initrd (taken out of it by image/build.sh) with the
disk as a copy-on-write overlay of the built image, opened ``cache=none`` so that killing
qemu with SIGKILL is a power cut: what the guest flushed is on the overlay, nothing else.

Two channels: the serial console (kernel and systemd messages) is written to a file, and a
virtio console (``/dev/hvc0``) carries a root shell started by the kernel command line
(``systemd.run=``, added by the test, not in the image): commands go in, their output and exit
status come back after a marker. Nothing waits blindly: every wait reads output until a
condition holds or a deadline passes.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = {"arm64": "qemu-system-aarch64", "amd64": "qemu-system-x86_64"}
# The serial console the kernel writes to, per machine type.
CONSOLE = {"arm64": "ttyAMA0", "amd64": "ttyS0"}
# A root shell on the virtio console, as a service of its own (kernel-command-line.service
# only starts it and exits, so the boot completes and no job stays pending).
SHELL_CMDLINE = (
    'systemd.run="systemd-run --unit=vm-test-shell -p StandardInput=tty -p StandardOutput=tty '
    '-p TTYPath=/dev/hvc0 -E TERM=dumb /bin/bash --norc --noprofile -i" '
    "systemd.run_success_action=none systemd.run_failure_action=none "
    "systemd.unit=multi-user.target systemd.wants=kernel-command-line.service"
)


class GuestError(AssertionError):
    """The guest did not do what the test waited for (with the console's tail)."""


@dataclass
class Result:
    rc: int
    out: str


class Guest:
    """One boot of one disk. ``start()`` boots, ``run()`` runs shell commands in the guest,
    ``power_cut()`` kills the emulator, ``stop()`` powers off cleanly."""

    def __init__(self, arch: str, disk: Path, kernel: Path, initrd: Path, workdir: Path,
                 memory_mb: int = 1536, cpus: int = 2, append: str = "") -> None:
        self.arch = arch
        self.disk = disk
        self.kernel = kernel
        self.initrd = initrd
        self.workdir = workdir
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.append = append
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.console_log = workdir / "console.log"
        self._buf = b""
        self.boots = 0

    # --- disk --------------------------------------------------------------------------------

    @staticmethod
    def make_overlay(base: Path, overlay: Path, size_mb: int | None = None) -> Path:
        """A qcow2 overlay on top of the (never written) built image; ``size_mb`` larger than
        the image is a bigger card (first boot grows the data partition into it)."""
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
               str(overlay)]
        if size_mb:
            cmd.append(f"{size_mb}M")
        subprocess.run(cmd, check=True, timeout=60)
        return overlay

    # --- life cycle --------------------------------------------------------------------------

    def command(self) -> list[str]:
        sock = self.workdir / "hvc0.sock"
        drive = f"file={self.disk},format=qcow2,if=none,id=disk0,cache=none,aio=threads"
        append = (f"root=LABEL=RASPIROOT rw console={CONSOLE[self.arch]} panic=-1 "
                  f"fsck.repair=yes net.ifnames=0 {self.append} {SHELL_CMDLINE}")
        cmd = [QEMU[self.arch]]
        if self.arch == "arm64":
            cmd += ["-M", "virt", "-cpu", "cortex-a72"]
        else:
            cmd += ["-M", "q35", "-cpu", "max"]
        cmd += [
            "-accel", "tcg,thread=multi", "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nographic", "-no-reboot", "-nodefaults",
            "-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", append,
            "-serial", f"file:{self.console_log}",
            "-drive", drive, "-device", "virtio-blk-pci,drive=disk0",
            "-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=hvc0,path={sock},server=on,wait=off",
            "-device", "virtconsole,chardev=hvc0",
            "-object", "rng-random,filename=/dev/urandom,id=rng0",
            "-device", "virtio-rng-pci,rng=rng0",
        ]
        return cmd

    def start(self) -> float:
        """Boot; returns once the test shell answers. The returned figure is seconds of wall
        time from the emulator's start to the shell."""
        assert self.proc is None
        sock_path = self.workdir / "hvc0.sock"
        sock_path.unlink(missing_ok=True)
        if self.console_log.exists():
            prev = self.workdir / f"console.{self.boots}.log"
            self.console_log.rename(prev)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.boots += 1
        deadline = time.monotonic() + 60
        while not sock_path.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise GuestError("qemu made no console socket")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(sock_path))
        self._buf = b""
        # The shell's first prompt says it is there; bash -i prints it as soon as it starts.
        self._read_until(re.compile(rb"[$#] ?$", re.M), timeout=1800)
        self._send(b"stty -echo; PS1=''; PS2=''; export PAGER=cat SYSTEMD_PAGER=cat\n")
        self.run("true", timeout=300)
        return time.monotonic() - t0

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            raise GuestError(f"qemu exited with {self.proc.returncode}: {out[-2000:]}\n"
                             f"console:\n{self.console_tail()}")

    def console_tail(self, n: int = 4000) -> str:
        try:
            return self.console_log.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def _read_until(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self._buf)
            if m:
                self._buf = self._buf[m.end():]
                return m
            self._check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"timed out waiting for {pattern.pattern!r}; got "
                                 f"{self._buf[-1500:]!r}\nconsole:\n{self.console_tail()}")
            ready, _, _ = select.select([self.sock], [], [], min(left, 1.0))
            if ready:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise GuestError(f"the guest shell closed\nconsole:\n{self.console_tail()}")
                self._buf += chunk

    def run(self, script: str, timeout: float = 600, check: bool = False) -> Result:
        """Run a shell script as root in the guest; its stdout+stderr and exit status."""
        tag = secrets.token_hex(6)
        b64 = base64.b64encode(script.encode()).decode()
        self._send(f"echo {b64} | base64 -d > /run/vmcmd-{tag}; bash /run/vmcmd-{tag} 2>&1; "
                   f"echo \"@@{tag} rc=$?@@\"; rm -f /run/vmcmd-{tag}\n".encode())
        m = self._read_until(re.compile(rb"(?s)(.*?)@@" + tag.encode() + rb" rc=(\d+)@@\r?\n"),
                             timeout)
        res = Result(int(m.group(2)), m.group(1).decode(errors="replace").replace("\r\n", "\n"))
        if check and res.rc != 0:
            raise GuestError(f"{script!r} exited {res.rc}: {res.out[-3000:]}")
        return res

    def wait_for(self, script: str, timeout: float, what: str) -> Result:
        """Run ``script`` until it exits 0 (polling the guest, not sleeping on the host)."""
        deadline = time.monotonic() + timeout
        last = Result(-1, "")
        while time.monotonic() < deadline:
            last = self.run(script, timeout=max(30.0, deadline - time.monotonic()))
            if last.rc == 0:
                return last
            self.run("sleep 1")
        raise GuestError(f"{what}: not within {timeout:.0f} s; last: {last.out[-2000:]}")

    def power_cut(self) -> None:
        """SIGKILL the emulator: the guest loses everything it had not flushed to its disk."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._close()

    def stop(self, timeout: float = 600) -> None:
        """A clean power-off from inside the guest (or a kill if it does not go)."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.sock is not None:
            try:
                self._send(b"systemctl poweroff\n")
                self.proc.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)
        elif self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        self._close()

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def have_qemu(arch: str) -> str | None:
    return shutil.which(QEMU[arch])
