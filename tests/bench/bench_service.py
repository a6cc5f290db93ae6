"""Benchmark of the appliance service (issue 4): idle cost, recording cost, trigger-to-capture.

    python3 -m tests.bench.bench_service [--seconds 20]

Runs the real `recorder run` on PortAudio through a private PulseAudio pipe source (fed at
real-time pace: a silent room with a marker click), with gpiozero's mock pins, and prints:
- idle CPU (% of one core) and RSS while armed;
- extra CPU while recording;
- trigger-to-capture: a marker played `--lead` seconds before the button press must be in the
  recording; the figure is how much audio before the press the recording holds, and where the
  marker landed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.control import send_command
from tests.pulse import PIPE_SOURCE, PulseServer

RATE = 48000
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lead", type=float, default=2.0,
                        help="seconds between the marker and the press")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = PulseServer(root / "pulse").start()
        cfg = root / "recorder.toml"
        cfg.write_text(f'[device]\nid = "bench"\n[storage]\ndata_dir = "{root / "data"}"\n'
                       'reserve_mb = 0\n[audio]\nsource = "pulse"\npreroll = 3.0\n')
        # Quiet noise, then a 50 ms click: fed continuously so the pipe source keeps clocking.
        rng = np.random.default_rng(3)
        marker_at = 10.0 + args.seconds
        total = marker_at + args.lead + 8.0
        pcm = (rng.normal(0, 30, int(total * RATE))).astype(np.int16)
        click = slice(int(marker_at * RATE), int((marker_at + 0.05) * RATE))
        pcm[click] = (np.sin(np.arange(click.stop - click.start) / 3) * 20000).astype(np.int16)
        feed = server.feed(pcm)
        fed_at = time.monotonic()
        env = {**os.environ, **server.env(source=PIPE_SOURCE), "GPIOZERO_PIN_FACTORY": "mock"}
        proc = subprocess.Popen([sys.executable, "-m", "recorder", "--config", str(cfg), "run"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sock = root / "data" / "state" / "control.sock"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if send_command(sock, "status")["state"] == "idle":
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
            time.sleep(3)  # settle
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds / 2)
            idle_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            idle_rss = rss_mb(proc.pid)
            send_command(sock, "start")
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds / 2)
            rec_cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
            rec_rss = rss_mb(proc.pid)
            send_command(sock, "stop")
            time.sleep(1)
            # Press the button `lead` seconds after the marker was fed.
            press_at = fed_at + marker_at + args.lead
            time.sleep(max(0.0, press_at - time.monotonic()))
            send_command(sock, "pin", pin=17, steps=[["press", 0], ["release", 0.1]])
            time.sleep(2)
            send_command(sock, "pin", pin=17, steps=[["press", 0], ["release", 0.1]])
            time.sleep(2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            feed.stop()
            server.stop()
        docs = sorted((root / "data" / "sync").rglob("*.json"))
        doc = json.loads(docs[-1].read_text())
        audio, _ = sf.read(docs[-1].with_suffix(".ogg"), dtype="int16")
        loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 10000)
        marker_in_recording = loud.size > 0
        report = {
            "idle_cpu_percent_of_one_core": round(idle_cpu * 100, 2),
            "idle_rss_mb": round(idle_rss, 1),
            "recording_cpu_percent_of_one_core": round(rec_cpu * 100, 2),
            "extra_cpu_while_recording_percent": round((rec_cpu - idle_cpu) * 100, 2),
            "recording_rss_mb": round(rec_rss, 1),
            "preroll_seconds_in_recording": doc["preroll"],
            "marker_lead_before_press_s": args.lead,
            "marker_in_recording": bool(marker_in_recording),
            "marker_position_s": round(loud[0] / RATE, 3) if marker_in_recording else None,
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
