"""The storage budget: the one owner of the rule "what may be freed, and in which order".

A device carries its own recordings, a receive-only copy of its peers' folders and staging.
Peers' audio is limited by ``[storage] peer_audio_mb`` (0: no limit, the hub's setting) and
``peer_audio_days`` (0: no age limit); beyond them, and whenever free space falls toward the
reserve, peers' dated folders (``recordings/YYYY/MM/DD``) are freed, oldest day first. Only
when nothing of others' is left are this device's own recordings freed, oldest first, and
only those that ``safe_copies`` other devices (or one of ``storage.hubs``) hold right now.

How a file leaves a device without Syncthing noticing (measured with Syncthing 1.19, see
README "Storage budget"): an **ignore pattern** is added to the folder (``/rest/db/ignores``)
and then the files are deleted. The folder stays "idle", needs nothing, shows no local
change, nothing is fetched again after a restart; in this device's own send-only folder the
peers keep their copies (an ignored file is never announced as deleted). A plain local
deletion in a receive-only folder is a "local change" instead: peers see this device as
out of sync for that file, and the mesh keeper's revert fetches it again.

Whether a copy exists elsewhere comes from ``/rest/db/file``'s ``availability`` (the devices
that announce the current version): a peer that freed a file by its own budget ignores it
and drops out of that list, whereas ``/rest/db/completion`` and ``/rest/db/remoteneed``
still count it as complete (measured), so they cannot tell that a recording is safe.

`scan` reads only directory entries (no sidecars): the pass is cheap on large trees.
`plan` is pure: the simulation (tests/bench/sim_storage.py) runs the same decisions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recorder.layout import Layout, device_folders
from recorder.storage import MB, FreeBytes, free_bytes

if TYPE_CHECKING:
    from recorder.config import StorageConfig
    from recorder.mesh.net.syncthing import SyncthingClient

log = logging.getLogger(__name__)

# Room kept free above the reserve, so the button never waits for a pass: about three hours
# of audio at the default settings (30 MB an hour).
HEADROOM_MB = 100
PASS_SECONDS = 60.0  # between budget passes of the service's worker
RECLAIM_AGAIN_SECONDS = 30.0  # after a reclaim that freed nothing
SAFETY_CHECKS_PER_PASS = 200  # own recordings looked up in Syncthing per pass (counting)
FRESH_NS = 5 * 10**9  # a dated folder changed this recently is listed again at each pass
_YEAR, _MONTH, _DAY = re.compile(r"\d{4}"), re.compile(r"\d{2}"), re.compile(r"\d{2}")


@dataclass(frozen=True)
class Day:
    """One dated folder (``recordings/YYYY/MM/DD``) of one device, as found on disk."""

    owner: str
    day: dt.date
    bytes: int
    files: int

    @property
    def rel(self) -> str:
        return f"recordings/{self.day:%Y/%m/%d}"


@dataclass(frozen=True)
class Own:
    """One of this device's recordings: every file of its dated folder sharing a stem."""

    day: dt.date
    stem: str
    bytes: int
    names: tuple[str, ...]

    @property
    def rel_dir(self) -> str:
        return f"recordings/{self.day:%Y/%m/%d}"

    @property
    def pattern(self) -> str:
        """The ignore pattern for this recording alone (never a later one of the same day)."""
        return f"/{self.rel_dir}/{self.stem}.*"


@dataclass(frozen=True)
class Inventory:
    """What a device holds: its own recordings, its peers' dated folders, staging."""

    own: tuple[Own, ...] = ()
    peers: tuple[Day, ...] = ()
    staging_bytes: int = 0

    @property
    def own_bytes(self) -> int:
        return sum(o.bytes for o in self.own)

    @property
    def peer_bytes(self) -> int:
        return sum(d.bytes for d in self.peers)


@dataclass(frozen=True)
class Policy:
    """The budget's settings (from ``[storage]``)."""

    peer_audio_mb: int = 0
    peer_audio_days: int = 0
    safe_copies: int = 1
    reserve_mb: int = 200
    headroom_mb: int = HEADROOM_MB

    @classmethod
    def of(cls, storage: StorageConfig) -> Policy:
        """The policy ``[storage]`` asks for."""
        return cls(peer_audio_mb=storage.peer_audio_mb, peer_audio_days=storage.peer_audio_days,
                   safe_copies=storage.safe_copies, reserve_mb=storage.reserve_mb)


@dataclass(frozen=True)
class Plan:
    """What one pass frees, and what it could not."""

    peer_days: tuple[Day, ...] = ()
    own: tuple[Own, ...] = ()
    own_kept_unsafe: int = 0  # own recordings that would have been freed, kept: too few copies
    short_bytes: int = 0  # still missing to reach reserve + headroom after this plan

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.peer_days) + sum(o.bytes for o in self.own)


def plan(inv: Inventory, policy: Policy, free: int, today: dt.date,
         is_safe: Callable[[Own], bool], *, need_bytes: int = 0) -> Plan:
    """Decide what to free: peers' days beyond `peer_audio_days`, then beyond
    `peer_audio_mb` (oldest first); then, while free space is short of reserve + headroom
    (+ `need_bytes`), more peers' days, oldest first; only then own recordings, oldest first,
    and only those `is_safe` says are held by enough others. Pure: reads nothing else."""
    peers = sorted(inv.peers, key=lambda d: (d.day, d.owner))
    freed: list[Day] = []
    keep: list[Day] = []
    cutoff = today - dt.timedelta(days=policy.peer_audio_days) if policy.peer_audio_days else None
    for d in peers:
        (freed if cutoff is not None and d.day < cutoff else keep).append(d)
    if policy.peer_audio_mb:
        held = sum(d.bytes for d in keep)
        while keep and held > policy.peer_audio_mb * MB:
            held -= keep[0].bytes
            freed.append(keep.pop(0))
    target = (policy.reserve_mb + policy.headroom_mb) * MB + need_bytes
    short = target - free - sum(d.bytes for d in freed)
    while short > 0 and keep:
        d = keep.pop(0)
        freed.append(d)
        short -= d.bytes
    own: list[Own] = []
    unsafe = 0
    if short > 0:
        for rec in sorted(inv.own, key=lambda o: (o.day, o.stem)):
            if short <= 0:
                break
            if rec.day >= today:  # never today's: it may still be growing on the peers
                continue
            if is_safe(rec):
                own.append(rec)
                short -= rec.bytes
            else:
                unsafe += 1
    return Plan(tuple(freed), tuple(own), unsafe, max(0, short))


def days_left(inv: Inventory, free: int, policy: Policy, today: dt.date) -> float | None:
    """Days until this device's own recordings alone use the room above the reserve, at
    the rate it recorded over the last 7 days: peers' audio counts as room (it is freed
    first), own recordings do not (they may not be safe). None when nothing was recorded."""
    since = today - dt.timedelta(days=7)
    rate = sum(o.bytes for o in inv.own if o.day >= since) / 7
    if rate <= 0:
        return None
    room = free + inv.peer_bytes - policy.reserve_mb * MB
    return max(0.0, room / rate)


def _dated_dirs(folder: Path) -> Iterable[tuple[dt.date, Path]]:
    """``recordings/YYYY/MM/DD`` directories under `folder` (never symlinks)."""
    def subdirs(path: Path, pattern: re.Pattern[str]) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                return [e for e in it if pattern.fullmatch(e.name)
                        and e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    for y in subdirs(folder / "recordings", _YEAR):
        for m in subdirs(Path(y.path), _MONTH):
            for d in subdirs(Path(m.path), _DAY):
                try:
                    day = dt.date(int(y.name), int(m.name), int(d.name))
                except ValueError:
                    continue
                yield day, Path(d.path)


def _files(path: Path) -> list[tuple[str, int]]:
    out = []
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    if e.is_file(follow_symlinks=False):
                        out.append((e.name, e.stat(follow_symlinks=False).st_size))
                except OSError:
                    continue
    except OSError:
        pass
    return out


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


class DirCache:
    """What `scan` learnt of each dated folder, kept while the folder's mtime stays the same:
    files arrive and leave by rename (the publisher, Syncthing), which changes it, so a pass
    stats one directory per day instead of every file. (A file growing in place, Syncthing's
    temporary download, is counted at the size it had when its folder last changed.)"""

    def __init__(self) -> None:
        self._dirs: dict[str, tuple[int, list[tuple[str, int]]]] = {}
        self._seen: set[str] = set()

    def files(self, path: Path) -> list[tuple[str, int]]:
        key = str(path)
        self._seen.add(key)
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            return []
        hit = self._dirs.get(key)
        if hit is not None and hit[0] == mtime:
            return hit[1]
        files = _files(path)
        # Directory times tick coarsely (a few ms): a change right after this listing could
        # leave the same mtime, so a folder changed in the last seconds is not trusted yet.
        if time.time_ns() - mtime > FRESH_NS:
            self._dirs[key] = (mtime, files)
        return files

    def sweep(self) -> None:
        """Forget folders the last scan did not see (freed, or gone)."""
        self._dirs = {k: v for k, v in self._dirs.items() if k in self._seen}
        self._seen = set()


def scan(layout: Layout, cache: DirCache | None = None) -> Inventory:
    """Read the tree: own recordings grouped by stem, peers' folders by day, staging size.
    Directory entries and sizes only (Syncthing's ``.syncthing.*.tmp`` files count too:
    they take space); with `cache`, unchanged dated folders are not listed again."""
    listing = cache.files if cache is not None else _files
    own: list[Own] = []
    for day, path in _dated_dirs(layout.device_folder):
        stems: dict[str, list[tuple[str, int]]] = {}
        for name, size in listing(path):
            stem = name.split(".", 1)[0] if not name.startswith(".") else name
            stems.setdefault(stem, []).append((name, size))
        for stem, files in stems.items():
            if stem.startswith("."):
                continue  # a Syncthing temporary file, never a recording of ours
            own.append(Own(day, stem, sum(s for _n, s in files),
                           tuple(sorted(n for n, _s in files))))
    peers: list[Day] = []
    for folder in device_folders(layout.sync_root):
        if folder.name == layout.device_id:
            continue
        for day, path in _dated_dirs(folder):
            files = listing(path)
            if files:
                peers.append(Day(folder.name, day, sum(s for _n, s in files), len(files)))
    if cache is not None:
        cache.sweep()
    return Inventory(tuple(own), tuple(peers), _tree_bytes(layout.staging_dir))


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class Freer:
    """Frees what a plan says, through Syncthing's ignore patterns (see the module doc):
    the pattern first, the files after, so Syncthing never sees a deletion to act on."""

    def __init__(self, layout: Layout, client: SyncthingClient | None) -> None:
        self.layout = layout
        self.client = client

    def _ignore(self, owner: str, patterns: Sequence[str]) -> None:
        if self.client is None:
            return
        from recorder.mesh.membership.provision import folder_id

        fid = folder_id(owner)
        current = self.client.request("GET", "/rest/db/ignores", params={"folder": fid})
        lines = list((current or {}).get("ignore") or [])
        new = [p for p in patterns if p not in lines]
        if new:
            self.client.request("POST", "/rest/db/ignores", params={"folder": fid},
                                json={"ignore": lines + new})

    def free_peer_days(self, days: Sequence[Day]) -> int:
        """Ignore, then delete, peers' dated folders; return the bytes freed."""
        freed = 0
        by_owner: dict[str, list[Day]] = {}
        for d in days:
            by_owner.setdefault(d.owner, []).append(d)
        for owner, group in by_owner.items():
            self._ignore(owner, [f"/{d.rel}" for d in group])
            for d in group:
                shutil.rmtree(self.layout.folder_of(owner) / d.rel, ignore_errors=True)
                freed += d.bytes
                log.info("storage: freed %s's %s (%d MB): peer audio over budget or space "
                         "needed", owner, d.rel, d.bytes // MB)
        return freed

    def free_own(self, recs: Sequence[Own]) -> int:
        """Ignore, then delete, own recordings already held elsewhere; return bytes freed."""
        if not recs:
            return 0
        self._ignore(self.layout.device_id, [r.pattern for r in recs])
        freed = 0
        for r in recs:
            folder = self.layout.device_folder / r.rel_dir
            for name in r.names:
                with contextlib.suppress(FileNotFoundError):
                    (folder / name).unlink()
            freed += r.bytes
            log.info("storage: freed own recording %s (%d KB): held by enough other devices",
                     r.stem, r.bytes // 1024)
        return freed


class Copies:
    """How many other devices hold an own recording now (``/rest/db/file`` availability of
    each of its files; the smallest count wins). Hubs count as enough on their own."""

    def __init__(self, client: SyncthingClient | None, own_folder: str,
                 safe_copies: int, hubs: Sequence[str] = ()) -> None:
        self.client = client
        self.folder = own_folder
        self.safe_copies = safe_copies
        self.hubs = frozenset(hubs)
        self._me: str | None = None

    def holders(self, rec: Own) -> set[str]:
        if self.client is None:
            return set()
        if self._me is None:
            self._me = self.client.device_id()
        held: set[str] | None = None
        for name in rec.names:
            info = self.client.file_info(self.folder, f"{rec.rel_dir}/{name}")
            devices = {a.get("id", "") if isinstance(a, dict) else str(a)
                       for a in info.get("availability") or []} - {self._me, ""}
            held = devices if held is None else held & devices
        return held or set()

    def is_safe(self, rec: Own) -> bool:
        """True when `safe_copies` other devices, or one hub, hold every file of `rec`.
        Any error (Syncthing down, unknown file) counts as not safe."""
        try:
            held = self.holders(rec)
        except Exception as exc:  # never free on doubt
            log.info("storage: cannot tell whether %s is safe: %s", rec.stem, exc)
            return False
        return len(held) >= self.safe_copies or bool(held & self.hubs)


@dataclass
class PassResult:
    """One pass: what was held, what was freed, what is left."""

    inventory: Inventory
    plan: Plan
    freed_bytes: int
    free_bytes: int
    seconds: float
    at: float = field(default_factory=time.time)


class Budget:
    """The service's budget worker: a pass every `PASS_SECONDS` (and on `wake`), and
    `reclaim(need)` for the disk reserve, called before a recording is ever refused."""

    name = "storage"

    def __init__(self, layout: Layout, policy: Policy, client: SyncthingClient | None, *,
                 hubs: Sequence[str] = (), free: FreeBytes = free_bytes,
                 today: Callable[[], dt.date] = lambda: dt.datetime.now(dt.UTC).date(),
                 interval: float = PASS_SECONDS) -> None:
        from recorder.mesh.membership.provision import folder_id

        self.layout = layout
        self.policy = policy
        self.freer = Freer(layout, client)
        self.copies = Copies(client, folder_id(layout.device_id), policy.safe_copies, hubs)
        self._free = free
        self._today = today
        self.interval = interval
        self._lock = threading.Lock()  # one pass at a time (worker, pump, main thread)
        self._count_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: PassResult | None = None
        self.last_error = ""
        self.freed_total = 0
        self._unsafe = 0
        self._safe_seen: set[str] = set()
        self._reclaim_quiet_until = 0.0
        self._dirs = DirCache()

    def run_pass(self, need_bytes: int = 0, *, dry_run: bool = False,
                 count: bool = True) -> PassResult:
        """Scan, plan and free (`dry_run`: plan only, as ``recorder doctor`` does), then
        count own recordings not yet safe (`count`; outside the pass's lock, so a reclaim
        from the pump never waits for the lookups); never raises for Syncthing's absence
        (nothing is freed that Syncthing would not understand: without it, nothing)."""
        with self._lock:
            t0 = time.monotonic()
            inv = scan(self.layout, self._dirs)
            free = self._free(self.layout.sync_root)
            today = self._today()
            decided = plan(inv, self.policy, free, today, self.copies.is_safe,
                           need_bytes=need_bytes)
            freed = 0
            if dry_run:
                pass
            elif self.freer.client is not None:
                try:
                    freed += self.freer.free_peer_days(decided.peer_days)
                    freed += self.freer.free_own(decided.own)
                    self.last_error = ""
                except Exception as exc:
                    self.last_error = f"could not free: {exc}"
                    log.error("storage: %s", self.last_error)
            elif decided.peer_days or decided.own:
                self.last_error = "Syncthing not configured: nothing freed"
            self.freed_total += freed
            result = PassResult(inv, decided, freed, self._free(self.layout.sync_root),
                                time.monotonic() - t0)
            self.last = result
        if count:
            with self._count_lock:
                self._count_unsafe(inv)
        return result

    def _count_unsafe(self, inv: Inventory) -> None:
        """Own recordings not yet held by enough others: newest first, a bounded number of
        lookups per pass; a recording once found safe is not looked up again."""
        if self.freer.client is None:
            self._unsafe = len(inv.own)
            return
        unsafe, checks = 0, 0
        for rec in sorted(inv.own, key=lambda o: (o.day, o.stem), reverse=True):
            if rec.stem in self._safe_seen:
                continue
            if checks >= SAFETY_CHECKS_PER_PASS:
                unsafe += 1  # not looked at this pass: counted as not safe
                continue
            checks += 1
            if self.copies.is_safe(rec):
                self._safe_seen.add(rec.stem)
            else:
                unsafe += 1
        self._unsafe = unsafe

    def reclaim(self, short_bytes: int) -> int:
        """Free room now, up to reserve + headroom (peers' audio first), because free space
        is `short_bytes` below the reserve (the plan measures that itself); return the
        bytes freed. Called by the disk reserve before it refuses a recording (and by a
        running recording every second of audio near the reserve: a pass that freed nothing
        is not repeated within `RECLAIM_AGAIN_SECONDS`)."""
        now = time.monotonic()
        if now < self._reclaim_quiet_until:
            return 0
        try:
            freed = self.run_pass(count=False).freed_bytes
            if not freed:
                self._reclaim_quiet_until = now + RECLAIM_AGAIN_SECONDS
            return freed
        except Exception as exc:
            log.error("storage: reclaim failed: %s", exc)
            return 0

    def status(self) -> dict[str, Any]:
        last = self.last
        if last is None:
            return {"state": "no pass yet"}
        inv = last.inventory
        return {
            "own_mb": inv.own_bytes // MB,
            "own_recordings": len(inv.own),
            "peers_mb": inv.peer_bytes // MB,
            "staging_mb": inv.staging_bytes // MB,
            "papad_mb": None,  # papad keeps its copies in its own storage (see README)
            "free_mb": last.free_bytes // MB,
            "own_not_safe": self._unsafe,
            "safe_copies": self.policy.safe_copies,
            "peer_audio_mb": self.policy.peer_audio_mb,
            "peer_audio_days": self.policy.peer_audio_days,
            "freed_mb_total": self.freed_total // MB,
            "short_mb": last.plan.short_bytes // MB,
            "days_left": _rounded(days_left(inv, last.free_bytes, self.policy,
                                            self._today())),
            "last_pass_s": round(last.seconds, 3),
            "last_error": self.last_error,
        }

    def line(self) -> str:
        """One line for ``recorder doctor`` and logs."""
        st = self.status()
        if "own_mb" not in st:
            return "no budget pass yet"
        left = st["days_left"]
        return (f"own {st['own_mb']} MB ({st['own_recordings']} recordings, "
                f"{st['own_not_safe']} not yet on {self.policy.safe_copies} other device(s)), "
                f"peers {st['peers_mb']} MB (budget "
                f"{st['peer_audio_mb'] or 'none'}), staging {st['staging_mb']} MB, "
                f"{st['free_mb']} MB free; "
                + (f"{left:.0f} days left at the last week's rate" if left is not None
                   else "nothing recorded in the last week"))

    # --- the worker ---------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="storage", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception as exc:
                self.last_error = str(exc)
                log.error("storage: budget pass failed: %s", exc)
            self._wake.wait(self.interval)
            self._wake.clear()
