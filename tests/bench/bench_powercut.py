"""A series of real power cuts on the booted appliance image, at chosen and random moments.

    sudo .venv/bin/python -m tests.bench.bench_powercut --cuts 12 [--seed N] [--json OUT]

One emulated machine (tests/vm.py: qemu TCG, disk ``cache=none``) boots the image built for
tests/test_image.py (built and cached the same way), arms the recorder on the ALSA loopback
(`snd-aloop`, noise played into its other side) and then, for every cut, does one thing and
SIGKILLs the emulator at a random moment inside it:

- ``recording``: a recording running for a random 1-15 s;
- ``publish``: a recording of a random 2-8 s stopped, the cut a random 0-3 s after the stop
  (finalising, Audio ID, the catalogue and outbox writes, the renames into the sync folder);
- ``marks``: a recording with bookmarks made as fast as the control socket takes them (each one
  a database write), the cut after a random 0-2 s of them;
- ``idle``: armed, nothing recording, a random 0-5 s after the last boot became armed.

After every cut the machine boots again and is checked once it is armed and its recordings
are published: file systems clean (fsck's journal, ext4 errors), nothing half-written in the
sync folder, every OGG readable (`ogginfo`), the database intact (`pragma integrity_check`),
no recording twice (catalogue rows and sidecars by recording id and sha256), and for a cut
mid-recording the audio lost: seconds recorded by the guest's clock at the cut plus pre-roll,
minus the recovered recording's duration (the kill follows the clock reading by at most the
reported latency). The figures are printed, and written as JSON with ``--json``.

Not a test: it takes 2-4 minutes a cut on a quiet 2-core machine. The delays here are the
random moments themselves; every wait for the guest is on a condition.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.test_image import ARCH, ARMED, RECORDER, _recorded_at_least, ensure_image
from tests.vm import Guest

SIDECARS = "find /srv/recorder/sync -name '*.json' -path '*/recordings/*'"
FLUSH_SECONDS = 2.0  # [storage] flush_seconds of the shipped config
KINDS = ("recording", "publish", "marks", "idle")


def _docs(guest: Guest) -> list[dict[str, Any]]:
    out = guest.run("python3 -c 'import json, sys; [print(json.dumps(json.load(open(f)))) "
                    f"for f in sys.argv[1:]]' $({SIDECARS})", check=True).out
    return [json.loads(ln) for ln in out.splitlines() if ln.strip().startswith("{")]


def _clock(guest: Guest) -> float:
    return float(guest.run("date +%s.%N", check=True).out.split()[-1])


def _arm(guest: Guest) -> None:
    guest.wait_for(ARMED, 1800, "recorder armed")
    guest.run("pidof aplay >/dev/null || { setsid aplay -q -D plughw:Loopback,1,0 -f S16_LE "
              "-r 48000 -c 1 -t raw /dev/urandom </dev/null >/dev/null 2>&1 & }", check=True)


def _cut(guest: Guest, kind: str, rng: random.Random) -> dict[str, Any]:
    """Do `kind`, cut the power at a random moment in it; what the guest saw before the cut."""
    # Counted before anything is recorded: a publish may complete before its cut.
    seen: dict[str, Any] = {"kind": kind, "sidecars_before": int(
        guest.run(f"{SIDECARS} | wc -l", check=True).out.split()[-1])}
    if kind == "idle":
        guest.run(f"sleep {rng.uniform(0, 5):.2f}", check=True)
    else:
        # Read before the start (the CLI takes a while under emulation): the loss reported is
        # then an upper bound, the cut's latency aside.
        t_start = _clock(guest)
        guest.run(f"{RECORDER} ctl start", check=True)
        if kind == "recording":
            seconds = rng.uniform(1, 15)
            guest.wait_for(_recorded_at_least(seconds), 600, f"{seconds:.1f} s recorded")
        elif kind == "publish":
            guest.wait_for(_recorded_at_least(rng.uniform(2, 8)), 600, "recorded")
            guest.run(f"{RECORDER} ctl stop >/dev/null && sleep {rng.uniform(0, 3):.2f}",
                      check=True)
        else:  # marks
            guest.wait_for(_recorded_at_least(2), 600, "recorded")
            guest.run(f"end=$(( $(date +%s%N) + {int(rng.uniform(0, 2) * 1e9)} )); "
                      f"while [ $(date +%s%N) -lt $end ]; do {RECORDER} ctl mark >/dev/null "
                      "|| true; done", check=True)
        seen["t_start"] = t_start
    seen["sidecars_before_cut"] = int(guest.run(f"{SIDECARS} | wc -l", check=True).out.split()[-1])
    host = time.time()
    seen["t_cut"] = _clock(guest)
    guest.power_cut()
    seen["cut_latency"] = round(time.time() - host, 3)
    return seen


def _check(guest: Guest, seen: dict[str, Any], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Boot after a cut and check it; returns the cut's row."""
    t0 = time.monotonic()
    guest.start()
    _arm(guest)
    row = dict(seen, rearmed_s=round(time.monotonic() - t0, 1))
    expect = seen["sidecars_before"] + (seen["kind"] != "idle")
    # Recovery publishes the interrupted recording (ExecStartPre, then the service again).
    guest.wait_for(f"test $({SIDECARS} | wc -l) -ge {expect}", 900, "recordings published")
    fsck = guest.run("journalctl -b -o cat -u 'systemd-fsck*' --no-pager; "
                     "systemctl is-failed -q 'systemd-fsck*' && echo FSCK-FAILED; "
                     "dmesg | grep -i 'ext4-fs error' || true").out
    row["fsck_clean"] = "FSCK-FAILED" not in fsck and "error" not in fsck.lower()
    row["fsck"] = [ln for ln in fsck.splitlines() if ln.strip()][-3:]
    row["half_written"] = guest.run(
        "find /srv/recorder/sync -name '*.partial' -o -name '.*.tmp*' -o -name '*.sync-conflict*'"
    ).out.split()
    row["bad_ogg"] = guest.run("for f in $(find /srv/recorder/sync -name '*.ogg'); do "
                               "ogginfo -q \"$f\" >/dev/null 2>&1 || echo $f; done").out.split()
    db = guest.run(
        "/opt/recorderpi/venv/bin/python3 -c \"import sqlite3; c = sqlite3.connect("
        "'file:/srv/recorder/state/recorder.db?mode=ro', uri=True); "
        "print(c.execute('pragma integrity_check').fetchone()[0]); "
        "print(c.execute('select count(*) - count(distinct sha256) from recordings')"
        ".fetchone()[0]); print(c.execute('select count(*) from recordings').fetchone()[0])\"",
        check=True).out.split()
    row["db_integrity"], row["catalogue_dups"], row["catalogue_rows"] = \
        db[-3], int(db[-2]), int(db[-1])
    docs = _docs(guest)
    ids = [d["recording_id"] for d in docs]
    row["sidecars"] = len(docs)
    row["sidecar_dups"] = len(ids) - len(set(ids)) + len(docs) - len({d["sha256"] for d in docs})
    new = [d for d in docs if d["recording_id"] not in known]
    for d in docs:
        known.setdefault(d["recording_id"], d)
    row["new"] = len(new)
    if seen["kind"] == "recording" and len(new) == 1:
        d = new[0]
        recorded = seen["t_cut"] - seen["t_start"]
        row["recorded_s"] = round(recorded, 2)
        row["lost_s"] = round(recorded + d["preroll"] - d["duration"], 2)
        row["recovered"] = d["recovered"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=int, default=12)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: " + ", ".join(KINDS))
    ap.add_argument("--json", type=Path, help="write every cut's row here")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    kinds = args.kinds.split(",")
    built = ensure_image()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="powercut-") as tmp:
        work = Path(tmp)
        size_mb = built.image.stat().st_size // (1 << 20) + 1024
        disk = Guest.make_overlay(built.image, work / "disk.qcow2", size_mb)
        guest = Guest(ARCH, disk, built.kernel, built.initrd, work, append="modules-load=snd-aloop")
        known: dict[str, dict[str, Any]] = {}
        try:
            guest.start()
            guest.wait_for("test -f /var/lib/recorderpi/firstboot.done", 1800, "first boot")
            guest.run("sed -i '0,/^source = /s/^source = .*/source = \"Loopback\"/' "
                      "/etc/recorder/recorder.toml && sync && systemctl restart recorder.service",
                      check=True)
            _arm(guest)
            for n in range(args.cuts):
                kind = rng.choice(kinds)
                row = _check(guest, _cut(guest, kind, rng), known)
                row["n"] = n + 1
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if guest.proc is not None:
                guest.power_cut()
    lost = [r["lost_s"] for r in rows if "lost_s" in r]
    summary = {
        "arch": ARCH, "seed": seed, "cuts": len(rows),
        "by_kind": {k: sum(r["kind"] == k for r in rows) for k in kinds},
        "flush_seconds": FLUSH_SECONDS,
        "lost_s": {"n": len(lost), "max": max(lost, default=None),
                   "median": statistics.median(lost) if lost else None},
        "fsck_unclean": sum(not r["fsck_clean"] for r in rows),
        "half_written": sum(len(r["half_written"]) for r in rows),
        "bad_ogg": sum(len(r["bad_ogg"]) for r in rows),
        "db_not_ok": sum(r["db_integrity"] != "ok" for r in rows),
        "duplicates": max((r["catalogue_dups"] + r["sidecar_dups"] for r in rows), default=0),
        "rearmed_s_median": statistics.median(r["rearmed_s"] for r in rows) if rows else None,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "cuts": rows}, indent=1))
    bad = (summary["fsck_unclean"] or summary["half_written"] or summary["bad_ogg"]
           or summary["db_not_ok"] or summary["duplicates"]
           or any(x > FLUSH_SECONDS + 0.5 for x in lost))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
