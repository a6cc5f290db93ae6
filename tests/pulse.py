"""A private PulseAudio daemon so tests capture through real PortAudio without a sound card.

The daemon runs as the current user (root on the build machines) with its own HOME,
XDG_RUNTIME_DIR, config dir and a unix socket with anonymous auth, and offers:

- ``recsink``: a null sink (48 kHz mono). Play into it with :meth:`PulseServer.play`.
- ``recsink.monitor``: the sink's monitor, the server's default source.
- ``pipesrc``: a pipe source (s16le, 48 kHz mono) reading the FIFO :attr:`PulseServer.fifo`.
  Write into it with :meth:`PulseServer.feed`.

PortAudio reaches the server through ALSA's pulse plugin (devices ``pulse`` and ``default``).

Choosing the source (``env(source=...)`` / :meth:`PulseServer.use_source`):

- ``"pipesrc"`` (:data:`PIPE_SOURCE`): raw s16le written at real-time pace comes back
  bit-exact, so tests can compare samples. But the pipe source is clocked by its writer: with
  nothing being written, PortAudio gets **no callbacks at all**, and ``stream.stop()`` then
  hangs (``abort()`` returns). Keep a feeder running (:meth:`feed`,
  :meth:`feed_silence_forever`) for as long as a stream is open on it.
- ``"recsink.monitor"`` (:data:`MONITOR_SOURCE`, the default): clocked by the server, so
  callbacks always come (silence when nothing plays); audio played with :meth:`play` arrives
  bit-exact apart from the first ~10 ms. Timing of what you play is less controlled.
  An idle null sink renders in 2 s blocks, so a stream opened on its monitor would wait up to
  2 s for its first callback; the server keeps a silent low-latency ``pacat`` playing into
  ``recsink`` (``warm_monitor=True``, then a suspend/resume cycle at start-up) so streams get
  their first callback within ~30 ms. Silence mixes in as zeros: played clips stay bit-exact.

Environment rules:

- The PulseAudio variables must be in the environment **before** PortAudio initialises:
  ``import sounddevice`` calls ``Pa_Initialize``, which enumerates devices once. The fixtures
  set ``os.environ`` and call :func:`reinit_portaudio` when sounddevice is already imported;
  after :meth:`restart` (or once the server was killed) call :func:`reinit_portaudio` again,
  with no stream open.
- ``PULSE_SOURCE`` is read each time a stream opens, so switching sources needs no re-init.
- A child process (a ``recorder`` subprocess) gets the variables from :meth:`env`:
  ``subprocess.Popen(..., env={**os.environ, **server.env(source="pipesrc")})``.
- Always ``abort()`` and ``close()`` streams in tests: sounddevice's exit handler calls
  ``stop()`` on the last stream, which hangs if that stream is starved.

No orphans: the fixtures stop the daemon even when a test fails; an ``atexit`` hook kills
leftovers; and the daemon runs under ``setpriv --pdeathsig KILL``, so it dies with the thread
that started it (start servers from the main thread, or a thread that outlives them).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import need

SAMPLERATE = 48000
SINK = "recsink"
MONITOR_SOURCE = "recsink.monitor"
PIPE_SOURCE = "pipesrc"

# sun_path holds 108 bytes; leave room for the name.
_MAX_SOCKET_PATH = 100
_ENV_KEYS = ("PULSE_SERVER", "PULSE_CLIENTCONFIG", "PULSE_SOURCE", "PULSE_SINK")
_live_servers: set[PulseServer] = set()


class PulseError(RuntimeError):
    """The test PulseAudio daemon could not be started or reached."""


def reinit_portaudio() -> None:
    """Re-run PortAudio's device enumeration, as the service does on reopening a device.

    Needed after the server (re)starts in a process that already imported sounddevice.
    Every stream must be closed first: terminating PortAudio invalidates them.
    """
    from recorder.sources.portaudio import rescan_devices

    rescan_devices()


class FeedHandle:
    """A background writer into the pipe source; ``join()`` it, ``stop()`` ends it early."""

    def __init__(self, target: Callable[[FeedHandle], None], name: str) -> None:
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.frames_written = 0
        self._thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
        self._thread.start()

    def _run(self, target: Callable[[FeedHandle], None]) -> None:
        try:
            target(self)
        except BaseException as exc:  # reported through .error, never lost in a thread
            self.error = exc

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the writer to finish; returns at once (``join()`` to wait)."""
        self._stop.set()

    def wait_stop(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if stop was requested meanwhile."""
        return self._stop.wait(seconds)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the writer to end; True if it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class PulseServer:
    """One private PulseAudio daemon rooted in `root` (created if missing)."""

    def __init__(
        self,
        root: Path | str | None = None,
        startup_timeout: float = 20.0,
        warm_monitor: bool = True,
    ) -> None:
        root = Path(root) if root is not None else None
        self._owns_root = root is None or len(str(root / "pulse.sock")) > _MAX_SOCKET_PATH
        if self._owns_root:
            root = Path(tempfile.mkdtemp(prefix="pulse-", dir="/tmp"))
        self.root = root
        self.socket = root / "pulse.sock"
        self.fifo = root / "pipesrc.fifo"
        self.log_path = root / "pulseaudio.log"
        self.startup_timeout = startup_timeout
        self.warm_monitor = warm_monitor
        self._warmer: subprocess.Popen | None = None
        self._home = root / "home"
        self._runtime = root / "xdg"
        self._client_conf = root / "client.conf"
        self._script = root / "default.pa"
        self._proc: subprocess.Popen | None = None
        self._feeders: set[FeedHandle] = set()
        self._players: set[subprocess.Popen] = set()

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> PulseServer:
        """Start the daemon (no-op if running); return once both sources are listed by pactl.

        Cleans up what a killed daemon left (socket, FIFO). Raises PulseError (with the log
        tail) if the daemon exits or is not ready within ``startup_timeout``; a half-started
        daemon is killed first.
        """
        if self.running:
            return self
        pulseaudio = need("pulseaudio", "pulseaudio")
        need("pactl", "pulseaudio-utils")
        self._prepare_dirs()
        cmd = [
            pulseaudio, "-n", "-F", str(self._script),
            "--daemonize=no", "--system=no", "--exit-idle-time=-1", "--disallow-exit",
            "--use-pid-file=no", "--realtime=no", "--high-priority=no",
            "--log-target=stderr", "--log-level=notice",
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv:
            # Kill the daemon if the test process dies without cleaning up (no orphans).
            cmd = [setpriv, "--pdeathsig", "KILL", *cmd]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=self._daemon_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live_servers.add(self)
        try:
            self._wait_ready()
            if self.warm_monitor:
                self._start_warmer()
        except BaseException:
            self.kill()
            raise
        return self

    def _start_warmer(self) -> None:
        pacat = need("pacat", "pulseaudio-utils")
        # pacat writes only as fast as the sink consumes, so /dev/zero is a clocked silence.
        with open("/dev/zero", "rb") as zero:
            self._warmer = subprocess.Popen(
                [pacat, "--playback", "-d", SINK, "--raw", "--format=s16le",
                 f"--rate={SAMPLERATE}", "--channels=1", "--latency-msec=20",
                 "--client-name=recsink-warmer"],
                env=self._client_env(),
                stdin=zero,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while not self.pactl("list", "short", "sink-inputs").strip():
            if self._warmer.poll() is not None or time.monotonic() > deadline:
                raise PulseError(f"the monitor warmer (pacat) did not connect:\n{self.log_tail()}")
            time.sleep(0.05)
        # The sink is still inside the 2 s block it began while idle; a suspend/resume cycle
        # restarts its clock at the warmer's 20 ms latency.
        self.pactl("suspend-sink", SINK, "1")
        self.pactl("suspend-sink", SINK, "0")

    def stop(self) -> None:
        """Stop feeders and players, then the daemon (SIGTERM, SIGKILL after 5 s). Idempotent.

        A root directory the server made itself (none given, or too long a socket path) is
        removed; a given root is kept, with the daemon's log.
        """
        self._stop_clients()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._proc = None
        _live_servers.discard(self)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the daemon, as a device unplug would end capture; waits until it is gone.

        Feeders end by themselves (``error`` = BrokenPipeError): after :meth:`start`, begin new
        ones. The socket and FIFO stay behind; :meth:`start` removes them.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._proc = None
        self._reap_warmer()
        _live_servers.discard(self)

    def _reap_warmer(self) -> None:
        warmer, self._warmer = self._warmer, None
        if warmer is not None:
            if warmer.poll() is None:
                warmer.kill()
            warmer.wait(5)

    def restart(self) -> PulseServer:
        """Stop (or finish off a killed daemon) and start again with the same socket."""
        self.stop()
        return self.start()

    def _prepare_dirs(self) -> None:
        for d in (self.root, self._home, self._runtime):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        # A killed daemon leaves both behind; module-pipe-source refuses an existing FIFO.
        for stale in (self.socket, self.fifo):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        # Clients must never autospawn a daemon of their own when ours is gone.
        self._client_conf.write_text("autospawn = no\n")
        self._script.write_text(
            ".fail\n"
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"load-module module-null-sink sink_name={SINK} rate={SAMPLERATE} channels=1\n"
            f"load-module module-pipe-source source_name={PIPE_SOURCE} file={self.fifo}"
            f" format=s16le rate={SAMPLERATE} channels=1\n"
            f"set-default-sink {SINK}\n"
            f"set-default-source {MONITOR_SOURCE}\n"
        )

    def _daemon_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(
            HOME=str(self._home),
            XDG_RUNTIME_DIR=str(self._runtime),
            XDG_CONFIG_HOME=str(self._home / ".config"),
            PULSE_CLIENTCONFIG=str(self._client_conf),
        )
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        return env

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise PulseError(f"pulseaudio exited during start-up:\n{self.log_tail()}")
            try:
                out = self.pactl("list", "short", "sources", timeout=5)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                last = str(exc)
            else:
                names = {line.split("\t")[1] for line in out.splitlines() if "\t" in line}
                if {PIPE_SOURCE, MONITOR_SOURCE} <= names and self.fifo.exists():
                    return
                last = f"sources so far: {sorted(names)}"
            time.sleep(0.1)
        raise PulseError(f"pulseaudio not ready after {self.startup_timeout} s ({last}):\n"
                         f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- clients -------------------------------------------------------------------------

    def env(self, source: str | None = MONITOR_SOURCE) -> dict[str, str]:
        """Variables a client process needs to capture from this server.

        `source` becomes ``PULSE_SOURCE`` (``None`` leaves the server default, the monitor).
        HOME is left alone: with an explicit server and anonymous auth no cookie is needed.
        """
        env = {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_CLIENTCONFIG": str(self._client_conf),
            "PULSE_SINK": SINK,
        }
        if source is not None:
            env["PULSE_SOURCE"] = source
        return env

    def _client_env(self) -> dict[str, str]:
        # The daemon's private HOME too, so the pulse tools write nothing into the real one.
        return {**self._daemon_env(), **self.env(source=None)}

    def pactl(self, *args: str, timeout: float = 10) -> str:
        """Run ``pactl`` against this server and return its stdout (raises on failure)."""
        return subprocess.run(
            ["pactl", *args],
            env=self._client_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=timeout,
        ).stdout

    def apply_env(self, source: str | None = MONITOR_SOURCE) -> dict[str, str | None]:
        """Put :meth:`env` into ``os.environ``; return the previous values for restore_env()."""
        saved = {k: os.environ.get(k) for k in _ENV_KEYS}
        for k in _ENV_KEYS:
            os.environ.pop(k, None)
        os.environ.update(self.env(source))
        return saved

    @staticmethod
    def restore_env(saved: dict[str, str | None]) -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    @contextlib.contextmanager
    def use_source(self, source: str) -> Iterator[None]:
        """Streams opened inside the block (in this process) capture from `source`."""
        old = os.environ.get("PULSE_SOURCE")
        os.environ["PULSE_SOURCE"] = source
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PULSE_SOURCE", None)
            else:
                os.environ["PULSE_SOURCE"] = old

    def play(self, path: Path | str) -> subprocess.Popen:
        """Start ``paplay -d recsink path``; the caller waits on the returned Popen."""
        paplay = need("paplay", "pulseaudio-utils")
        proc = subprocess.Popen(
            [paplay, "-d", SINK, str(path)],
            env=self._client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._players.add(proc)
        return proc

    def feed(self, pcm_int16: np.ndarray, realtime: bool = True) -> FeedHandle:
        """Write `pcm_int16` (mono int16) into the pipe source from a background thread.

        With `realtime`, data goes out in 10 ms chunks on a 48 kHz schedule (what a sound
        card would deliver); otherwise as fast as the FIFO takes it. The handle's
        ``error`` is set if writing failed (e.g. BrokenPipeError after :meth:`kill`).
        """
        data = np.ascontiguousarray(np.asarray(pcm_int16, dtype="<i2").reshape(-1))

        def chunks(handle: FeedHandle) -> Iterator[np.ndarray]:
            for i in range(0, len(data), _CHUNK):
                yield data[i : i + _CHUNK]

        return self._start_feeder(chunks, realtime, "pulse-feed")

    def feed_silence_forever(self) -> FeedHandle:
        """Keep the pipe source clocked with real-time silence until ``stop()``."""
        zeros = np.zeros(_CHUNK, dtype="<i2")

        def chunks(handle: FeedHandle) -> Iterator[np.ndarray]:
            while True:
                yield zeros

        return self._start_feeder(chunks, True, "pulse-silence")

    def _start_feeder(
        self, chunks: Callable[[FeedHandle], Iterator[np.ndarray]], realtime: bool, name: str
    ) -> FeedHandle:
        fifo = self.fifo

        def run(handle: FeedHandle) -> None:
            # The daemon holds the FIFO open for reading, so this fails fast (ENXIO) if it is
            # gone; non-blocking so a server that stopped reading cannot wedge the thread.
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            try:
                t0 = time.monotonic()
                for chunk in chunks(handle):
                    if handle.stopping:
                        return
                    if realtime:
                        due = t0 + handle.frames_written / SAMPLERATE
                        delay = due - time.monotonic()
                        if delay > 0 and handle.wait_stop(delay):
                            return
                    _write_all(fd, chunk.tobytes(), handle)
                    handle.frames_written += len(chunk)
            finally:
                os.close(fd)

        handle = FeedHandle(run, name)
        self._feeders.add(handle)
        return handle

    def _stop_clients(self) -> None:
        self._reap_warmer()
        for handle in list(self._feeders):
            handle.stop()
            handle.join(5)
        self._feeders.clear()
        for proc in list(self._players):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            if proc.stderr:
                proc.stderr.close()
        self._players.clear()


_CHUNK = SAMPLERATE // 100  # 10 ms


def _write_all(fd: int, buf: bytes, handle: FeedHandle) -> None:
    view = memoryview(buf)
    while view:
        if handle.stopping:
            return
        _, writable, _ = select.select([], [fd], [], 0.2)
        if not writable:
            continue
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[n:]


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live_servers):
        server.kill()


# ---- pytest fixtures -------------------------------------------------------------------------


def _serve(root: Path) -> Iterator[PulseServer]:
    server = PulseServer(root)
    saved = None
    try:
        server.start()
        saved = server.apply_env()
        if "sounddevice" in sys.modules:
            reinit_portaudio()
        yield server
    finally:
        server.stop()
        if saved is not None:
            server.restore_env(saved)
            if "sounddevice" in sys.modules:
                # Back to the devices of whatever server the environment now names.
                with contextlib.suppress(Exception):
                    reinit_portaudio()


@pytest.fixture(scope="session")
def pulse(tmp_path_factory) -> Iterator[PulseServer]:
    """A PulseAudio server shared by the session; ``os.environ`` points at it (monitor source).

    Do not kill or restart it: use ``pulse_fresh`` for that.
    """
    yield from _serve(tmp_path_factory.mktemp("pulse"))


@pytest.fixture
def pulse_fresh(tmp_path_factory) -> Iterator[PulseServer]:
    """A PulseAudio server of the test's own, free to kill and restart.

    ``os.environ`` points at it for the test; PortAudio is re-initialised on entry when
    sounddevice is already imported. Close every stream before the test ends.
    """
    yield from _serve(tmp_path_factory.mktemp("pulsefresh"))
