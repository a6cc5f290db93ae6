"""CPU and RSS of the armed service on the ALSA path, against `arecord` and `oggenc`, measured
inside the booted appliance image (one emulated machine, qemu TCG; tests/vm.py).

    sudo .venv/bin/python -m tests.bench.bench_image_cpu [--seconds 30] [--blocksizes 1024,4096]

The image is the one tests/test_image.py builds (and caches). In the guest, the recorder is
armed on the ALSA loopback (`snd-aloop`), noise played into its other side with `aplay`, no
PulseAudio; then, from `/proc/PID/stat` ticks over the same window:

- the service armed and idle, once per ``[audio] blocksize`` given (the PortAudio buffer, in
  frames at 48 kHz: 1024 is the shipped value, a callback into Python every 21 ms), the service
  restarted with each;
- `arecord -D hw:Loopback,0,0` capturing the same device (the service stopped meanwhile: the
  device has one reader), the same format, writing to /dev/null;
- the service recording, and `oggenc -q 4` encoding the same stream from `arecord`.

An emulated core is many times slower than a Pi's, so only the ratios mean something. Prints
one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.test_image import ARCH, ARMED, RECORDER, ensure_image
from tests.vm import Guest

# Ticks and RSS of a set of pids over a window, measured inside the guest.
MEASURE = r"""
pids="$1"; secs="$2"
t() { for p in $pids; do awk '{print $14 + $15}' /proc/$p/stat; done |
      awk '{s += $1} END {print s}'; }
up() { awk '{print $1}' /proc/uptime; }
a=$(t); u0=$(up); sleep "$secs"; b=$(t); u1=$(up)
rss=0; for p in $pids; do r=$(awk '/^VmRSS/ {print $2}' /proc/$p/status); rss=$((rss + r)); done
echo "$a $b $u0 $u1 $(getconf CLK_TCK) $rss"
"""


def _measure(guest: Guest, pids: str, seconds: float) -> dict[str, float]:
    guest.run(f"cat > /run/measure.sh <<'EOF'\n{MEASURE}\nEOF", check=True)
    out = guest.run(f"bash /run/measure.sh '{pids}' {seconds}", timeout=seconds + 300,
                    check=True).out.split()
    a, b, u0, u1, hz, rss = (float(x) for x in out[-6:])
    return {"cpu_pct": round(100 * (b - a) / hz / (u1 - u0), 2), "rss_mb": round(rss / 1024, 1)}


def _service_pid(guest: Guest) -> str:
    out = guest.run("systemctl show -p MainPID --value recorder.service", check=True).out
    return out.split()[-1]


def _set_blocksize(guest: Guest, frames: int) -> None:
    guest.run(f"sed -i '0,/^blocksize = /s/^blocksize = .*/blocksize = {frames}/' "
              "/etc/recorder/recorder.toml && systemctl restart recorder.service", check=True)
    guest.wait_for(ARMED, 900, f"armed with blocksize {frames}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--blocksizes", default="1024,4096")
    args = ap.parse_args(argv)
    built = ensure_image()
    s = args.seconds
    res: dict[str, Any] = {"arch": ARCH, "seconds": s}
    with tempfile.TemporaryDirectory(prefix="imagecpu-") as tmp:
        work = Path(tmp)
        disk = Guest.make_overlay(built.image, work / "disk.qcow2")
        guest = Guest(ARCH, disk, built.kernel, built.initrd, work, append="modules-load=snd-aloop")
        try:
            guest.start()
            guest.wait_for("test -f /var/lib/recorderpi/firstboot.done", 1800, "first boot")
            guest.run("sed -i '0,/^source = /s/^source = .*/source = \"Loopback\"/' "
                      "/etc/recorder/recorder.toml", check=True)
            guest.run("setsid aplay -q -D plughw:Loopback,1,0 -f S16_LE -r 48000 -c 1 -t raw "
                      "/dev/urandom </dev/null >/dev/null 2>&1 &", check=True)
            for frames in (int(x) for x in args.blocksizes.split(",")):
                _set_blocksize(guest, frames)
                res[f"service_idle_blocksize_{frames}"] = _measure(guest, _service_pid(guest), s)
            _set_blocksize(guest, 1024)
            guest.run(f"{RECORDER} ctl start", check=True)
            res["service_recording"] = _measure(guest, _service_pid(guest), s)
            guest.run(f"{RECORDER} ctl stop", check=True)
            guest.run("systemctl stop recorder.service", check=True)
            guest.run("setsid arecord -q -D hw:Loopback,0,0 -f S16_LE -r 48000 -c 1 -t raw "
                      ">/dev/null </dev/null 2>&1 & echo $! > /run/arecord.pid", check=True)
            res["arecord"] = _measure(guest, guest.run("cat /run/arecord.pid").out.split()[-1], s)
            guest.run("kill $(cat /run/arecord.pid)")
            guest.run("setsid sh -c 'arecord -q -D hw:Loopback,0,0 -f S16_LE -r 48000 -c 1 -t raw "
                      "| oggenc -Q -q 4 -r -R 48000 -C 1 -B 16 -o /dev/null -' </dev/null "
                      ">/dev/null 2>&1 &", check=True)
            guest.wait_for("pidof oggenc", 60, "oggenc running")
            res["oggenc"] = _measure(guest, guest.run("pidof oggenc").out.split()[-1], s)
            guest.run("pkill -x arecord; pkill -x oggenc")
        finally:
            if guest.proc is not None:
                guest.power_cut()
    idle = res["service_idle_blocksize_1024"]["cpu_pct"] if "service_idle_blocksize_1024" in res \
        else None
    if idle is not None and res["arecord"]["cpu_pct"]:
        res["idle_vs_arecord"] = round(idle / res["arecord"]["cpu_pct"], 1)
    if res["oggenc"]["cpu_pct"]:
        res["recording_vs_oggenc"] = round(res["service_recording"]["cpu_pct"]
                                           / res["oggenc"]["cpu_pct"], 1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
