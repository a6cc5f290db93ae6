"""The whole appliance for benchmarks: the real `recorder run` with every worker on.

`Appliance(root)` starts, side by side on this machine:
- a private PulseAudio server with a pipe source fed at real-time pace (real PortAudio capture,
  a quiet room: low noise), or a looping WAV file source with ``pulse=False``;
- papad: the in-process imitation (`tests.fake_papad.FakePapad`, token auth), or a real papad
  server from the kit (`tests.papad_kit`) with ``real_papad=True``;
- one real Syncthing instance (`tests.syncthing_harness`) with this device's folder set up, so
  the bridge, its Syncthing event long poll and the annotation exchange all run;
- the service, ``recorder --config CFG run``, with mock GPIO pins (input threads and the LED
  thread run as on a Pi); radio and the web page off.

Use it as a context manager; everything it started is stopped on exit. `pid` is the service's
process, `sock` its control socket, `cfg_path` the config a CLI call can use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recorder.control import send_command
from tests.conftest import terminate

TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "bench-token-0123456789abcdef"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def wakeups(pid: int) -> dict[str, int]:
    """Voluntary context switches per thread name (a thread that sleeps and wakes adds one per
    wake-up), summed over threads of the same name."""
    counts: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        name = fields.get("Name", "?").strip()
        counts[name] = counts.get(name, 0) + int(fields["voluntary_ctxt_switches"])
    return counts


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Appliance:
    """See the module docstring. `sections` override or add config keys."""

    def __init__(self, root: Path, *, pulse: bool = True, real_papad: bool = False,
                 workers: bool = True, pcm: np.ndarray | None = None,
                 **sections: dict[str, Any]) -> None:
        """`pcm`: mono int16 fed into the pipe source at real-time pace (default: an hour of
        quiet noise); `fed_at` is the monotonic time its first frame went in."""
        self.root = root
        self.pcm = pcm
        self.fed_at = 0.0
        self.pulse_on = pulse
        self.real_papad = real_papad
        self.workers = workers
        self.sections = sections
        self.started: list[Any] = []  # things with stop(), stopped in reverse
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = root / "data"
        self.sock = self.data / "state" / "control.sock"
        self.cfg_path = root / "recorder.toml"

    # -- parts -----------------------------------------------------------------------------

    def _papad_section(self) -> dict[str, Any]:
        if self.real_papad:
            from tests.papad_kit import PapadServer, kit_path  # the kit: AGPL, used in place

            kit = kit_path()
            if kit is None:
                raise SystemExit("--real-papad needs the papad kit ($RECORDER_PAPAD_KIT)")
            server = PapadServer(kit, "upstream", self.root / "papad").start()
            self.started.append(server)
            return server.papad_section(self.root, timeout=10.0)
        from tests.fake_papad import FakePapad
        from tests.papad_setup import write_secret

        papad = FakePapad().start()
        self.started.append(papad)
        papad.add_user("recorder", token=TOKEN, groups=(1,))
        token = write_secret(self.root / "papad.token", TOKEN)
        return {"api": "papad", "url": papad.url, "auth": "token", "token_file": str(token),
                "group": 1, "timeout": 5.0}

    def _syncthing_section(self) -> dict[str, Any]:
        from tests.syncthing_harness import SyncthingCluster

        cluster = SyncthingCluster(1, self.root / "syncthing").__enter__()
        self.started.append(cluster)
        inst = cluster[0]
        self.sync_root = inst.sync_root
        return {"url": inst.url, "api_key_file": str(inst.key_file), "watcher_delay": 60,
                "rescan_interval": 3600}

    def _source_section(self, env: dict[str, str]) -> dict[str, Any]:
        if self.pulse_on:
            from tests.pulse import PIPE_SOURCE, PulseServer

            server = PulseServer(self.root / "pulse").start()
            self.started.append(server)
            pcm = self.pcm
            if pcm is None:
                pcm = np.random.default_rng(3).normal(0, 30, 48000 * 3600).astype(np.int16)
            self.fed_at = time.monotonic()
            self.started.append(server.feed(pcm))
            env.update(server.env(source=PIPE_SOURCE))
            return {"source": "pulse"}
        import soundfile as sf

        from tests.clips import RATE, tone

        wav = self.root / "loop.wav"
        sf.write(wav, np.tile(tone(1.0, 300, 0.2), 2), RATE, subtype="PCM_16")
        return {"source": f"file:{wav}"}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Appliance:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock"}
        sections: dict[str, dict[str, Any]] = {
            "device": {"id": "bench"},
            "storage": {"data_dir": str(self.data), "reserve_mb": 0},
            "audio": {**self._source_section(env), "preroll": 3.0},
        }
        if self.workers:
            sections["papad"] = self._papad_section()
            sections["syncthing"] = self._syncthing_section()
            sections["storage"]["sync_root"] = str(self.sync_root)
        for name, values in self.sections.items():
            sections.setdefault(name, {}).update(values)
        write_toml(self.cfg_path, sections)
        self.env = env
        if self.workers:
            self.cli("mesh", "setup")
        self.log = open(self.root / "service.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config",
                                      str(self.cfg_path), "run"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if send_command(self.sock, "status")["state"] == "idle":
                    break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not arm; see "
                                       f"{self.root / 'service.log'}") from None
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cli(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``recorder --config CFG ARGV`` as a user runs it; raises on a non-zero exit."""
        return subprocess.run([sys.executable, "-m", "recorder", "--config", str(self.cfg_path),
                               *argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=True)

    def cmd(self, command: str, **args: Any) -> dict[str, Any]:
        return send_command(self.sock, command, timeout=15, **args)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        if self.proc is not None:
            self.log.close()
        for part in reversed(self.started):
            try:
                if hasattr(part, "close"):
                    part.close()
                else:
                    part.stop()
            except Exception as exc:  # stop the rest regardless
                print(f"stopping {part!r}: {exc}", file=sys.stderr)
        self.started.clear()
