"""Debian 12 roots for tests: made by debootstrap once per package list and cached, copied per
test, and booted under real systemd with ``systemd-nspawn``.

`debian_root(layers)` returns a cached root: Debian 12 minbase with systemd, systemd-sysv and
dbus, then each layer of packages installed with apt (no recommends), each layer cached on top
of the one before. The cache key is the suite, the mirror and the package lists, so a changed
list builds anew; a fresh machine builds it all (debootstrap about 2 minutes, a layer about 1).
`copy_root` gives a test its own copy (``cp --reflink=auto``).

`Container` boots a root (``--boot``, ``--private-network``: the container sees only its own
loopback, so its Syncthing, nginx and web page never meet the host's ports) and runs commands
inside through ``nsenter`` into the namespaces of its PID 1: no machined, no D-Bus needed on
the host. systemctl inside talks to the container's systemd over its private socket.

The cache lives in ``$RECORDER_ROOT_CACHE`` (default ``~/.cache/recorderpi-test/debian-roots``);
concurrent test runs share it under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
BOOT_PACKAGES = ("systemd", "systemd-sysv", "dbus")
# Bump when the recipe below changes in a way the key does not see.
RECIPE = 1
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    return Path(os.environ.get("RECORDER_ROOT_CACHE")
                or Path.home() / ".cache" / "recorderpi-test" / "debian-roots")


def debian_mirror() -> str:
    """The Debian archive URI apt already uses here (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if not src.is_file() or src.name.endswith((".disabled", ".save")) or "disabled" in src.name:
            continue
        text = src.read_text(errors="replace")
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            m = re.match(rf"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{SUITE}\s", line)
            if m:
                return m.group(1)
    raise RuntimeError(f"no Debian {SUITE} mirror configured in /etc/apt/sources.list*")


def install_sh_packages(*arrays: str) -> list[str]:
    """The packages services/install.sh installs with apt, read from its own arrays."""
    script = REPO / "services" / "install.sh"
    names = " ".join(f'"${{{a}[@]}}"' for a in arrays)
    text = script.read_text()
    defs = "\n".join(m.group(0) for m in re.finditer(r"^[A-Z_]+_PACKAGES=\([^)]*\)", text, re.M))
    out = subprocess.run(["bash", "-c", f"{defs}\nprintf '%s\\n' {names}"], check=True,
                         capture_output=True, text=True).stdout
    return [p for p in out.split() if p]


def _run(cmd: Sequence[str], timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({res.returncode}):\n"
                           f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def chroot_mounts(root: Path) -> Iterator[None]:
    """/proc, DNS and a policy-rc.d that forbids service starts, for apt inside `root`."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _run(["mount", "-t", "proc", "proc", str(root / "proc")])
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    try:
        if Path("/etc/resolv.conf").exists():
            resolv.unlink(missing_ok=True)
            shutil.copy(Path("/etc/resolv.conf").resolve(), resolv)
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        policy.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


def apt_install(root: Path, packages: Sequence[str]) -> None:
    """apt-get install `packages` (no recommends) inside the Debian tree `root`."""
    env = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    for v in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if os.environ.get(v):
            env[v] = os.environ[v]
    with chroot_mounts(root):
        _run(["chroot", str(root), "apt-get", "update", "-qq"], env=env)
        _run(["chroot", str(root), "apt-get", "install", "-y", "-qq", "--no-install-recommends",
              *packages], env=env)
        _run(["chroot", str(root), "apt-get", "clean"], env=env)


def debian_root(layers: Sequence[Sequence[str]] = ()) -> Path:
    """A cached Debian 12 root with systemd, and every layer of packages installed in order.

    Read-only for the caller: copy it (`copy_root`) before changing anything. Built when its
    key (suite, mirror, package lists, recipe) is not cached yet; a build is never visible half
    made (built beside, then renamed).
    """
    mirror = debian_mirror()
    spec = [SUITE, mirror, list(BOOT_PACKAGES), [sorted(layer) for layer in layers], RECIPE]
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]
    cache = cache_dir()
    done = cache / key
    with _locked(cache / f".{key}.lock"):
        if (done / "root").is_dir():
            (done / "spec.json").touch()  # last used: what _prune goes by
            return done / "root"
        build = cache / f".build-{key}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        if layers:
            below = debian_root(layers[:-1])
            _run(["cp", "-a", "--reflink=auto", str(below), str(build / "root")])
            apt_install(build / "root", layers[-1])
        else:
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BOOT_PACKAGES)}",
                  SUITE, str(build / "root"), mirror])
            # Every copy boots as a new machine (systemd makes the id at first boot).
            (build / "root/etc/machine-id").write_text("")
        (build / "spec.json").write_text(json.dumps(spec, indent=1))
        build.rename(done)
    _prune(cache)
    return done / "root"


def _prune(cache: Path, days: float = 30) -> None:
    """Remove cached roots nobody used for `days` (an old package list's, say)."""
    for spec in cache.glob("*/spec.json"):
        with contextlib.suppress(OSError):
            if time.time() - spec.stat().st_mtime > days * 86400:
                with _locked(cache / f".{spec.parent.name}.lock"):
                    shutil.rmtree(spec.parent, ignore_errors=True)


def copy_root(base: Path, dest: Path) -> Path:
    """A private copy of a cached root (`cp -a --reflink=auto`); returns `dest`."""
    _run(["cp", "-a", "--reflink=auto", str(base), str(dest)])
    return dest


def _procs() -> dict[int, tuple[int, list[int]]]:
    """pid -> (parent pid, NSpid list) for every process on the host."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"^PPid:\s*(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
        ns = re.search(r"^NSpid:\s*(.+)$", status, re.M)
        out[int(d.name)] = (ppid, [int(x) for x in ns.group(1).split()] if ns else [])
    return out


class Container:
    """One root booted under systemd-nspawn, stopped by `stop()` (always call it)."""

    def __init__(self, root: Path, log: Path, name: str = "recorderpi-test",
                 extra_args: Sequence[str] = ()) -> None:
        self.root = root
        self.log = log
        self.name = name
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as the host sees it

    def start(self, timeout: float = 120) -> None:
        nspawn = shutil.which("systemd-nspawn") or "systemd-nspawn"
        cmd = [nspawn, "--quiet", "--register=no", "--keep-unit", "--boot",
               "--private-network", f"--machine={self.name}", "--console=pipe",
               "-D", str(self.root), *self.extra_args]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited ({self.proc.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("the container's PID 1 did not appear")
            self.leader = self._find_leader()
            if not self.leader:
                time.sleep(0.2)

    def _find_leader(self) -> int:
        assert self.proc is not None
        procs = _procs()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.proc.pid]
        while todo:
            pid = todo.pop()
            ns = procs.get(pid, (0, []))[1]
            if len(ns) > 1 and ns[-1] == 1:
                return pid
            todo.extend(children.get(pid, []))
        return 0

    def host_pid(self, pid: int) -> int:
        """The host's pid of the container's process `pid` (0 if there is none)."""
        mine = os.readlink(f"/proc/{self.leader}/ns/pid")
        for host, (_, ns) in _procs().items():
            if len(ns) > 1 and ns[-1] == pid:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{host}/ns/pid") == mine:
                        return host
        return 0

    def run(self, *cmd: str, user: str | None = None, timeout: float = 120,
            check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` inside the container (its namespaces and root), as root or `user`."""
        assert self.leader, "the container is not running"
        inner = ["env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "TERM=dumb"]
        if user:
            inner = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                     *inner, f"HOME=/var/lib/{user}"]
        full = ["nsenter", f"--target={self.leader}", "--mount", "--uts", "--ipc", "--net",
                "--pid", "--cgroup", "--root", "--wd", "--", *inner, *cmd]
        res = subprocess.run(full, capture_output=True, text=True, timeout=timeout,
                             input=input)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in the container failed ({res.returncode}):\n"
                               f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def systemctl_show(self, unit: str, *props: str) -> dict[str, str]:
        res = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def wait_booted(self, timeout: float = 600) -> str:
        """Wait until systemd finished starting up; returns "running" or "degraded"."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the container stopped ({self.proc.returncode}):\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            state = self.run("systemctl", "is-system-running", timeout=60).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(1)
        raise RuntimeError(f"the container did not finish booting: {state!r}\n"
                           + self.run("systemctl", "list-jobs", "--no-pager").stdout)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-b", *args, timeout=120).stdout

    def stop(self, timeout: float = 120) -> int | None:
        """Power the container off (nspawn turns SIGTERM into an orderly shutdown); kill it
        if that takes longer than `timeout`. Returns nspawn's exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(60)
        return self.proc.returncode
