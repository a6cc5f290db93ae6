"""Storage simulation (not a test by itself): ``python3 tests/bench/sim_storage.py``.

A pure model of a mesh's cards over years, on a compressed clock (one step is one day),
driving the storage budget's own decisions (`recorder.budget.plan`): what Syncthing does is
modelled (who holds which recording), what is freed is decided by the real rule. Each day
every device records `hours` at 30 MB an hour (68 kbit/s, the default settings), asking the
reserve first exactly as the service does (a pass before any refusal); it then meets each
peer and the hub with probability `online` (copies move both ways, minus what a receiver
ignores: days it freed, days older than its ``peer_audio_days``), and runs a budget pass.

Checked every day: no card refuses a recording; no own recording is freed while it is held
by fewer than `safe_copies` other devices, unless the hub holds it; at the end (after a week
of catching up) the hub holds every recording ever made. Printed: storage per device against
mesh size and time, with the budget and without it (every device keeps everything).
``--bench``: the cost of one budget pass (`scan` + `plan`) on a real tree of 100,000
recordings (small files), against ``du -s`` of the same tree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from recorder.budget import Day, DirCache, Inventory, Own, Policy, plan, scan
from recorder.layout import Layout
from recorder.storage import MB

MB_PER_HOUR = 30
START = dt.date(2026, 1, 1)
HUB = "hub"


@dataclass
class Device:
    name: str
    card_mb: int
    policy: Policy
    own: dict[int, int] = field(default_factory=dict)  # recording index -> bytes (own, held)
    peers: dict[tuple[str, int], int] = field(default_factory=dict)  # (owner, day) -> bytes
    ignored: set[tuple[str, int]] = field(default_factory=set)  # peers' days freed here
    refused: int = 0
    used_bytes: int = 0  # kept with every change (summing on each call costs minutes)

    def used(self) -> int:
        return self.used_bytes

    def free(self) -> int:
        return self.card_mb * MB - self.used()


@dataclass
class Result:
    refused: int
    unsafe_frees: int
    hub_missing: int
    # (day, mean MB per device, max MB per device, mean MB of own recordings per device)
    curve: list[tuple[int, float, float, float]]


def simulate(devices: int = 30, days: int = 730, hours: float = 1.0, card_gb: int = 32,
             peer_audio_mb: int = 8000, peer_audio_days: int = 0, safe_copies: int = 1,
             reserve_mb: int = 200, online: float = 0.8, seed: int = 1) -> Result:
    """Run the model; see the module doc. The hub's card is unlimited (``peer_audio_mb``
    0, the hub's setting); every other card is `card_gb` minus 4 GB of system."""
    rnd = random.Random(seed)
    rec_bytes = int(hours * MB_PER_HOUR * MB)
    policy = Policy(peer_audio_mb=peer_audio_mb, peer_audio_days=peer_audio_days,
                    safe_copies=safe_copies, reserve_mb=reserve_mb)
    devs = [Device(f"d{i:02d}", (card_gb - 4) * 1024, policy) for i in range(devices)]
    hub = Device(HUB, 10**9, Policy(reserve_mb=reserve_mb))
    # Recording (owner, day) is held by: the owner (in .own) and the devices in holders.
    holders: dict[tuple[str, int], set[str]] = {}
    unsafe_frees = 0
    curve: list[tuple[int, float, float, float]] = []

    dates = [START + dt.timedelta(days=i) for i in range(days + 8)]
    # The inventory's items, kept with every change (rebuilt each pass, they cost minutes).
    own_items: dict[str, dict[int, Own]] = {d.name: {} for d in devs}
    day_items: dict[str, dict[tuple[str, int], Day]] = {d.name: {} for d in [*devs, hub]}

    def inventory(dev: Device) -> Inventory:
        return Inventory(own=tuple(own_items[dev.name].values()),
                         peers=tuple(day_items[dev.name].values()))

    def budget_pass(dev: Device, today: int) -> None:
        nonlocal unsafe_frees

        def safe(rec: Own) -> bool:
            i = (rec.day - START).days
            held = holders[(dev.name, i)] - {dev.name}
            return len(held) >= dev.policy.safe_copies or HUB in held

        decided = plan(inventory(dev), dev.policy, dev.free(), START + dt.timedelta(days=today),
                       safe)
        for d in decided.peer_days:
            key = (d.owner, (d.day - START).days)
            dev.used_bytes -= dev.peers.pop(key)
            del day_items[dev.name][key]
            dev.ignored.add(key)
            holders[key].discard(dev.name)
        for rec in decided.own:
            i = (rec.day - START).days
            held = holders[(dev.name, i)] - {dev.name}
            if len(held) < dev.policy.safe_copies and HUB not in held:
                unsafe_frees += 1  # the rule broke its promise (never expected)
            dev.used_bytes -= dev.own.pop(i)
            del own_items[dev.name][i]
            holders[(dev.name, i)].discard(dev.name)

    # What each owner has not yet delivered to each other device (Syncthing's "need").
    pending: dict[tuple[str, str], list[int]] = {}

    def meet(a: Device, b: Device, today: int) -> None:
        """a's own recordings reach b, except what b ignores (days it freed, days older than
        its ``peer_audio_days``) or a no longer holds (the model sends only from the owner)."""
        cutoff = today - b.policy.peer_audio_days if b.policy.peer_audio_days else None
        for i in pending.pop((a.name, b.name), []):
            key = (a.name, i)
            if (i not in a.own or key in b.ignored
                    or (cutoff is not None and i < cutoff)):
                continue
            if b.free() - a.own[i] < b.policy.reserve_mb * MB:
                # Syncthing stops pulling at the folder's minDiskFree (the reserve): the file
                # waits until the next pass made room.
                pending.setdefault((a.name, b.name), []).append(i)
                continue
            b.peers[key] = a.own[i]
            b.used_bytes += a.own[i]
            day_items[b.name][key] = Day(a.name, dates[i], a.own[i], 2)
            holders[key].add(b.name)

    for today in range(days + 7):
        recording = today < days
        for dev in devs:
            if not recording:
                break
            if dev.free() - rec_bytes < reserve_mb * MB:
                budget_pass(dev, today)  # the reserve's reclaim, before any refusal
            if dev.free() - rec_bytes < reserve_mb * MB:
                dev.refused += 1
                continue
            dev.own[today] = rec_bytes
            dev.used_bytes += rec_bytes
            own_items[dev.name][today] = Own(dates[today], f"{dev.name}-{today}", rec_bytes,
                                             ("x.ogg",))
            holders[(dev.name, today)] = {dev.name}
            for other in [*devs, hub]:
                if other is not dev:
                    pending[(dev.name, other.name)] = [
                        *pending.get((dev.name, other.name), []), today]
        for dev in devs:
            for other in [*devs, hub]:
                if other is not dev and (rnd.random() < online or not recording):
                    meet(dev, other, today)  # offline: what it needs waits in `pending`
            budget_pass(dev, today)
        if today % 30 == 0 or today == days - 1:
            used = [d.used() / MB for d in devs]
            own = sum(sum(d.own.values()) for d in devs) / MB / len(devs)
            curve.append((today, sum(used) / len(used), max(used), own))
    hub_missing = sum(1 for (owner, _i), held in holders.items()
                      if owner != HUB and HUB not in held)
    return Result(sum(d.refused for d in devs), unsafe_frees, hub_missing, curve)


def bench_pass(n: int = 100_000) -> tuple[float, float, float, float]:
    """Seconds for `scan` (first pass, then a later pass with the folder cache the service
    keeps) + `plan` on a tree of `n` recordings (own 10 %, 29 peers), and for ``du -s`` of the
    same tree (all after one warm-up read)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        layout = Layout("d00", root / "sync", root / "staging")
        layout.staging_dir.mkdir()
        per_day = 4
        for k in range(n):
            owner = "d00" if k % 10 == 0 else f"d{1 + k % 29:02d}"
            day = START + dt.timedelta(days=(k // 30) // per_day)
            folder = layout.folder_of(owner) / f"recordings/{day:%Y/%m/%d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"r{k}.ogg").write_bytes(b"x" * 64)
            (folder / f"r{k}.json").write_bytes(b"{}")
        scan(layout)
        cache = DirCache()
        t0 = time.perf_counter()
        inv = scan(layout, cache)
        t1 = time.perf_counter()
        scan(layout, cache)
        t2 = time.perf_counter()
        plan(inv, Policy(peer_audio_mb=1), 10**12, dt.date(2030, 1, 1), lambda _r: True)
        t3 = time.perf_counter()
        subprocess.run(["du", "-s", str(layout.sync_root)], check=True, capture_output=True)
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--peer-audio-mb", type=int, default=8000)
    ap.add_argument("--bench", action="store_true", help="time a pass on 100,000 recordings")
    args = ap.parse_args()
    if args.bench:
        first, later, p, du = bench_pass()
        print(f"budget pass on 100,000 recordings: first scan {first:.2f} s, later scans "
              f"{later:.3f} s (folder cache), plan {p:.3f} s; du -s of the same tree {du:.2f} s")
        return
    print(f"{'devices':>7} {'day':>5} {'mean MB':>9} {'own MB':>8} {'peers MB':>9} "
          f"{'max MB':>8} {'keep-all MB':>12}")
    for n in (5, 10, 20, 30):
        res = simulate(devices=n, days=args.days, peer_audio_mb=args.peer_audio_mb)
        for day, mean, top, own in res.curve:
            if day in (0, 30, 90, 180, 360, 540, 720) or day == args.days - 1:
                print(f"{n:>7} {day:>5} {mean:>9.0f} {own:>8.0f} {mean - own:>9.0f} "
                      f"{top:>8.0f} {(day + 1) * n * MB_PER_HOUR:>12}")
        print(f"{n:>7} devices: refused {res.refused}, freed below safe copies "
              f"{res.unsafe_frees}, missing on the hub {res.hub_missing}")


if __name__ == "__main__":
    main()
