"""Benchmark of the command line's start (issue 16): the light commands beside `python -c pass`.

    python3 -m tests.bench.bench_cli [--runs 20] [--real-papad]

Starts the whole appliance (`tests.bench.appliance`: the real `recorder run` on a file source
with papad, one real Syncthing and the bridge), makes one recording so the outbox and the
catalogue hold something, then runs each command that only talks to the service or reads the
database (`--version`, `--help`, `ctl status`, `ctl status --json`, `outbox list`, `mesh
status`) `--runs` times, each run followed by `python -c pass` (same interpreter), and prints
per command the median wall time, the median of the pairwise ratios to `python -c pass`, and
the median CPU (user + system of the child). The commands run through the installed console
script, as a user runs them, with the package byte-compiled as an installed package is.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recorder
from tests.bench.appliance import Appliance

COMMANDS = (("--version",), ("--help",), ("ctl", "status"), ("ctl", "status", "--json"),
            ("outbox", "list"), ("mesh", "status"))


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, cpu s, exit code) of one run of `argv`, output discarded."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "recorder"
    return [str(script)] if script.exists() else [sys.executable, "-m", "recorder"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--real-papad", action="store_true",
                        help="the real upstream papad from the kit instead of the imitation")
    args = parser.parse_args()
    # An installed package is byte-compiled (pip does it); a source checkout may not be.
    compileall.compile_dir(Path(recorder.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp, \
            Appliance(Path(tmp), pulse=False, real_papad=args.real_papad) as app:
        app.cmd("start")
        time.sleep(1.5)
        app.cmd("stop")
        deadline = time.monotonic() + 30
        while not app.cmd("status")["published"] and time.monotonic() < deadline:
            time.sleep(0.1)
        env = app.env
        base = [sys.executable, "-c", "pass"]
        report: dict[str, object] = {"runs": args.runs}
        for words in COMMANDS:
            argv = [*console_script(), "--config", str(app.cfg_path), *words]
            timed(argv, env), timed(base, env)  # warm the page cache
            walls, cpus, ratios, bases, codes = [], [], [], [], set()
            for _ in range(args.runs):
                wall, cpu, code = timed(argv, env)
                base_wall, _, _ = timed(base, env)
                walls.append(wall)
                cpus.append(cpu)
                bases.append(base_wall)
                ratios.append(wall / base_wall)
                codes.add(code)
            report[" ".join(words)] = {
                "wall_ms_median": round(statistics.median(walls) * 1000, 1),
                "python_c_pass_wall_ms_median": round(statistics.median(bases) * 1000, 1),
                "ratio_to_python_c_pass": round(statistics.median(ratios), 2),
                "cpu_ms_median": round(statistics.median(cpus) * 1000, 1),
                "exit_codes": sorted(codes),
            }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
