"""The storage budget (recorder/budget.py): the rule in isolation, then with real Syncthing 1.19.

Real-Syncthing tests: a owns recordings, b carries a small budget of peers' audio, c holds
everything (the hub). The free space figure near the reserve is injected (`free=`), the files,
ignore patterns and availability are real.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest

from recorder.budget import Budget, Day, Inventory, Own, Policy, plan, scan
from recorder.config import parse_config
from recorder.errors import ConfigError, DiskReserveError
from recorder.layout import Layout
from recorder.mesh.membership import provision
from recorder.storage import MB, Reserve
from tests.conftest import wait_until
from tests.syncthing_harness import Instance, syncthing_cluster  # noqa: F401 - fixture

TODAY = dt.date(2026, 3, 1)


def _day(owner: str, n: int, mb: float = 1) -> Day:
    return Day(owner, TODAY - dt.timedelta(days=n), int(mb * MB), 2)


def _own(n: int, mb: float = 1) -> Own:
    return Own(TODAY - dt.timedelta(days=n), f"own{n}", int(mb * MB), (f"own{n}.json",
                                                                        f"own{n}.ogg"))


# --- the rule, pure ---------------------------------------------------------------------------

def test_peer_budget_frees_oldest_days_first_across_peers():
    inv = Inventory(peers=(_day("p1", 5), _day("p2", 9), _day("p1", 7), _day("p2", 1)))
    out = plan(inv, Policy(peer_audio_mb=2, reserve_mb=0, headroom_mb=0), 10**12, TODAY,
               lambda _r: True)
    assert [(d.owner, (TODAY - d.day).days) for d in out.peer_days] == [("p2", 9), ("p1", 7)]
    assert not out.own


def test_peer_days_limit_frees_older_days_whatever_the_size():
    inv = Inventory(peers=(_day("p1", 40, 0.1), _day("p1", 10, 0.1)))
    out = plan(inv, Policy(peer_audio_days=30, reserve_mb=0, headroom_mb=0), 10**12, TODAY,
               lambda _r: True)
    assert [(TODAY - d.day).days for d in out.peer_days] == [40]


def test_space_frees_peers_before_any_own_recording():
    inv = Inventory(own=(_own(30),), peers=(_day("p1", 2), _day("p1", 1)))
    out = plan(inv, Policy(reserve_mb=10, headroom_mb=0), 9 * MB, TODAY, lambda _r: True)
    assert [(TODAY - d.day).days for d in out.peer_days] == [2]
    assert not out.own and out.short_bytes == 0


def test_own_recordings_freed_only_when_safe_and_needed():
    inv = Inventory(own=(_own(3), _own(2), _own(1), _own(0)))
    safe = {"own2", "own0"}
    # Plenty of room: nothing of ours is touched, safe or not.
    assert not plan(inv, Policy(reserve_mb=10, headroom_mb=0), 100 * MB, TODAY,
                    lambda r: r.stem in safe).own
    out = plan(inv, Policy(reserve_mb=10, headroom_mb=0), 5 * MB, TODAY,
               lambda r: r.stem in safe)
    # own3 is older but not safe: kept and counted; today's own0 is never freed.
    assert [r.stem for r in out.own] == ["own2"]
    assert out.own_kept_unsafe == 2 and out.short_bytes == 4 * MB


def test_scan_groups_own_by_stem_and_peers_by_day(tmp_path: Path):
    layout = Layout("dev-a", tmp_path / "sync", tmp_path / "staging")
    own = layout.device_folder / "recordings/2026/02/27"
    own.mkdir(parents=True)
    (own / "x.ogg").write_bytes(b"o" * 1000)
    (own / "x.json").write_bytes(b"{}")
    peer = layout.folder_of("dev-b") / "recordings/2026/02/26"
    peer.mkdir(parents=True)
    (peer / "y.ogg").write_bytes(b"p" * 500)
    (layout.folder_of("dev-b") / "recordings/notaday").mkdir()
    layout.staging_dir.mkdir()
    (layout.staging_dir / "z.part").write_bytes(b"s" * 300)
    inv = scan(layout)
    assert [(o.stem, o.bytes, o.names) for o in inv.own] == [("x", 1002, ("x.json", "x.ogg"))]
    assert [(d.owner, d.day, d.bytes) for d in inv.peers] == [("dev-b", dt.date(2026, 2, 26),
                                                               500)]
    assert inv.staging_bytes == 300


def test_config_keys_validated():
    cfg = parse_config({"storage": {"peer_audio_mb": 2000, "peer_audio_days": 90,
                                    "safe_copies": 2, "hubs": ["a" * 56]},
                        "papad": {"keep_days": 30}})
    assert cfg.storage.peer_audio_mb == 2000 and cfg.storage.safe_copies == 2
    assert cfg.storage.hubs == ("-".join(["AAAAAAA"] * 8),)
    assert cfg.papad.keep_days == 30
    for section, key, bad in (("storage", "safe_copies", 0), ("storage", "peer_audio_mb", -1),
                              ("storage", "hubs", ["nope"]), ("papad", "keep_days", "x")):
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            parse_config({section: {key: bad}})


# --- with real Syncthing ----------------------------------------------------------------------

def _publish(inst: Instance, rel: str, data: bytes) -> None:
    staging = inst.root / "staging"
    staging.mkdir(exist_ok=True)
    tmp = staging / Path(rel).name
    tmp.write_bytes(data)
    dest = inst.folder_path(inst.recorder_id) / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


def _days(n: int) -> list[str]:
    return [f"recordings/2026/01/{d:02d}/r{d:02d}" for d in range(1, n + 1)]


def _layout(inst: Instance) -> Layout:
    return Layout(inst.recorder_id, inst.sync_root, inst.root / "staging")


def _quiet(inst: Instance, owner: str) -> dict:
    """The folder's status once Syncthing is idle (nothing needed, no local change)."""
    fid = provision.folder_id(owner)
    wait_until(lambda: inst.client.db_status(fid).get("state") == "idle", 60, 0.2,
               f"{fid} idle on {inst.name}")
    return inst.client.db_status(fid)


@pytest.fixture
def mesh3(syncthing_cluster):  # noqa: F811 - the fixture imported above
    cluster = syncthing_cluster(3)
    cluster.pair_all()
    a, b, c = cluster
    for rel in _days(6):
        _publish(a, rel + ".ogg", os.urandom(300 * 1024))
        _publish(a, rel + ".json", b"{}")
    a.client.scan(provision.folder_id(a.recorder_id))
    for inst in (b, c):
        for rel in _days(6):
            inst.wait_for_file(rel + ".ogg", a.recorder_id, 60)
            inst.wait_for_file(rel + ".json", a.recorder_id, 60)
    fid = provision.folder_id(a.recorder_id)

    def announced() -> bool:  # b and c have told a they hold every file
        return all(len(a.client.file_info(fid, rel + ext).get("availability") or []) == 2
                   for rel in _days(6) for ext in (".ogg", ".json"))

    wait_until(announced, 60, 0.2, "b and c announcing a's files")
    return cluster


def test_small_peer_budget_keeps_newest_days_no_out_of_sync_no_refetch(mesh3):
    a, b, _c = mesh3
    budget = Budget(_layout(b), Policy(peer_audio_mb=1, reserve_mb=0, headroom_mb=0), b.client,
                    free=lambda _p: 10**12, today=lambda: dt.date(2026, 1, 7))
    result = budget.run_pass()
    held = sorted(p.parent.name for p in b.folder_path(a.recorder_id).rglob("*.ogg"))
    assert held == ["04", "05", "06"], held  # 3 x 300 KB within 1 MB, the newest
    assert result.inventory.peer_bytes - result.freed_bytes <= MB
    fid = provision.folder_id(a.recorder_id)
    status = _quiet(b, a.recorder_id)
    assert status["needTotalItems"] == 0 and status["receiveOnlyChangedFiles"] == 0
    assert b.client.request("GET", "/rest/db/localchanged", params={"folder": fid})["files"] == []
    # A new recording still arrives; nothing freed comes back, even after a restart.
    _publish(a, "recordings/2026/01/07/r07.ogg", b"new")
    a.client.scan(fid)
    b.wait_for_file("recordings/2026/01/07/r07.ogg", a.recorder_id, 60)
    b.restart()
    mesh3.wait_connected(60)
    b.client.scan(fid)
    _quiet(b, a.recorder_id)
    time.sleep(2)  # anything Syncthing would fetch again starts within this
    assert not (b.folder_path(a.recorder_id) / "recordings/2026/01/01").exists()
    assert b.client.db_status(fid)["needTotalItems"] == 0
    assert budget.status()["peers_mb"] <= 1


def test_own_recordings_kept_until_enough_copies_then_freed(mesh3):
    a, b, c = mesh3
    free = {"bytes": 10 * MB - 700 * 1024}  # 700 KB short of a 10 MB reserve

    def make(safe_copies: int) -> tuple[Budget, Reserve]:
        budget = Budget(_layout(a), Policy(safe_copies=safe_copies, reserve_mb=10,
                                           headroom_mb=0),
                        a.client, free=lambda _p: free["bytes"], today=lambda: dt.date(2026, 1, 7))
        reserve = Reserve(a.sync_root, 10, free=lambda _p: free["bytes"])
        reserve.reclaim = budget.reclaim
        return budget, reserve

    # Three copies promised, only two other devices: nothing of ours is ever freed, the
    # recording is refused, and status says how many are not safe.
    budget, reserve = make(3)
    with pytest.raises(DiskReserveError):
        reserve.check()
    assert len(list(a.folder_path(a.recorder_id).rglob("*.ogg"))) == 6
    assert budget.last is not None and budget.last.plan.own_kept_unsafe == 6
    budget.run_pass()  # the worker's pass also counts (a reclaim from the pump does not)
    assert budget.status()["own_not_safe"] == 6
    assert len(list(a.folder_path(a.recorder_id).rglob("*.ogg"))) == 6

    # Two copies (b and c hold them): freed oldest first until the reserve is met, and the
    # peers keep their copies (an ignored file is never announced as deleted).
    budget, reserve = make(2)
    real_free = budget.reclaim

    def reclaim(need: int) -> int:
        freed = real_free(need)
        free["bytes"] += freed
        return freed

    reserve.reclaim = reclaim
    assert reserve.check() >= 10 * MB
    left = sorted(p.parent.name for p in a.folder_path(a.recorder_id).rglob("*.ogg"))
    assert left == ["04", "05", "06"], left  # 3 x 300 KB, the oldest
    time.sleep(2)
    for peer in (b, c):
        assert len(list(peer.folder_path(a.recorder_id).rglob("*.ogg"))) == 6
        assert _quiet(peer, a.recorder_id)["needTotalItems"] == 0


def test_off_for_a_week_catches_up_within_its_budget(mesh3):
    a, b, _c = mesh3
    fid = provision.folder_id(a.recorder_id)
    budget = Budget(_layout(b), Policy(peer_audio_mb=1, reserve_mb=0, headroom_mb=0), b.client,
                    free=lambda _p: 10**12, today=lambda: dt.date(2026, 1, 14), interval=0.5)
    budget.start()
    try:
        wait_until(lambda: budget.last is not None and budget.last.inventory.peer_bytes <= MB,
                   60, 0.2, "b within its budget")
        b.stop()  # off for a week: a records days 7..13
        for d in range(7, 14):
            _publish(a, f"recordings/2026/01/{d:02d}/r{d:02d}.ogg", os.urandom(300 * 1024))
        a.client.scan(fid)
        b.start()
        mesh3.wait_connected(60)

        def caught_up() -> bool:
            held = sorted(p.parent.name for p in b.folder_path(a.recorder_id).rglob("*.ogg"))
            st = b.client.db_status(fid)
            return (held == ["11", "12", "13"] and st.get("state") == "idle"
                    and st.get("needTotalItems") == 0)

        wait_until(caught_up, 120, 0.5, "b caught up, holding the newest 1 MB only")
    finally:
        budget.stop()
    assert b.client.db_status(fid)["receiveOnlyChangedFiles"] == 0


def test_simulation_30_devices_two_years_32gb_cards():
    """The pure model of tests/bench/sim_storage.py (compressed clock, the budget's own
    `plan`): no refusal, nothing freed below its safe copies, the hub holds everything."""
    from tests.bench.sim_storage import simulate

    res = simulate(devices=30, days=730, hours=1.0, card_gb=32, peer_audio_mb=8000)
    assert res.refused == 0
    assert res.unsafe_frees == 0
    assert res.hub_missing == 0
    assert max(top for _d, _m, top, _o in res.curve) <= (32 - 4) * 1024 - 200  # never past reserve


def test_visible_in_doctor_status_and_metrics(tmp_path: Path):
    from recorder.cli.doctor import doctor
    from recorder.web.metrics import render

    cfg = parse_config({"device": {"id": "dev-a"},
                        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 0}})
    layout = Layout.of("dev-a", cfg.storage)
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    own = layout.device_folder / f"recordings/{day:%Y/%m/%d}"
    own.mkdir(parents=True)
    (own / "r.ogg").write_bytes(b"o" * (2 * MB))
    (own / "r.json").write_bytes(b"{}")
    peer = layout.folder_of("dev-b") / "recordings/2026/01/01"
    peer.mkdir(parents=True)
    (peer / "p.ogg").write_bytes(b"p" * (3 * MB))
    check = {c["name"]: c for c in doctor(cfg)}["storage budget"]
    assert check["ok"], check
    # No Syncthing: nothing can be known to be safe elsewhere, so it is counted and kept.
    assert "own 2 MB (1 recordings, 1 not yet on 1 other device(s)), peers 3 MB" \
        in check["detail"]
    budget = Budget(layout, Policy(reserve_mb=0), None)
    budget.run_pass()
    st = budget.status()
    assert (st["own_mb"], st["peers_mb"], st["own_not_safe"]) == (2, 3, 1)
    assert st["days_left"] is not None and st["days_left"] > 0
    assert (own / "r.ogg").exists() and (peer / "p.ogg").exists()  # nothing freed without it
    text = render({"storage": st, "free_mb": 10, "reserve_mb": 0}, {}, None, {}, None)
    assert 'recorder_storage_bytes{use="own"} 2097152' in text
    assert 'recorder_storage_bytes{use="peers"} 3145728' in text
    assert "recorder_own_not_safe 1" in text
    assert "recorder_storage_days_left" in text


def test_service_wiring_runs_the_budget_and_the_reserve_asks_it(tmp_path: Path):
    from recorder import app

    cfg = parse_config({"device": {"id": "dev-a"},
                        "storage": {"data_dir": str(tmp_path / "data"), "peer_audio_mb": 5},
                        "web": {"enabled": False}})
    parts = app.assemble(cfg, app.Role.WORKERS)
    try:
        assert parts.storage is not None and parts.storage in parts.workers
        assert parts.reserve.reclaim == parts.storage.reclaim
        assert parts.storage.policy.peer_audio_mb == 5
    finally:
        parts.close()
    one_off = app.assemble(cfg)  # `recorder record` and other one-off commands: no budget
    try:
        assert one_off.storage is None and one_off.reserve.reclaim is None
    finally:
        one_off.close()


def test_scan_cache_sees_renamed_in_and_removed_files(tmp_path: Path):
    from recorder.budget import DirCache

    layout = Layout("dev-a", tmp_path / "sync", tmp_path / "staging")
    day = layout.folder_of("dev-b") / "recordings/2026/02/26"
    day.mkdir(parents=True)
    (day / "y.ogg").write_bytes(b"p" * 500)
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(day, ns=(hour_ago, hour_ago))  # settled: the cache keeps what it listed
    cache = DirCache()
    assert scan(layout, cache).peer_bytes == 500
    (day / "y.ogg").write_bytes(b"p" * 900)  # changed in place: no new mtime, not seen
    os.utime(day, ns=(hour_ago, hour_ago))
    assert scan(layout, cache).peer_bytes == 500
    tmp = tmp_path / "z.tmp"
    tmp.write_bytes(b"q" * 300)
    os.replace(tmp, day / "z.ogg")  # how files arrive: a rename, a new mtime
    assert scan(layout, cache).peer_bytes == 1200
    (day / "y.ogg").unlink()
    assert scan(layout, cache).peer_bytes == 300  # changed seconds ago: listed every pass


def test_copies_counted_per_file_and_a_hub_is_enough(mesh3):
    from recorder.budget import Copies

    a, b, c = mesh3
    fid = provision.folder_id(a.recorder_id)
    rec = scan(_layout(a)).own[0]
    assert Copies(a.client, fid, 2).holders(rec) == {b.device_id, c.device_id}
    assert Copies(a.client, fid, 2).is_safe(rec)
    assert not Copies(a.client, fid, 3).is_safe(rec)
    assert Copies(a.client, fid, 3, hubs=[c.device_id]).is_safe(rec)
    # b frees a's day by its budget (ignore, delete): it no longer counts as a copy, although
    # Syncthing's completion still calls b complete.
    Budget(_layout(b), Policy(peer_audio_days=1, reserve_mb=0, headroom_mb=0), b.client,
           free=lambda _p: 10**12, today=lambda: dt.date(2026, 3, 1)).run_pass()
    wait_until(lambda: Copies(a.client, fid, 2).holders(rec) == {c.device_id}, 60, 0.2,
               "b dropping out of the availability")
    assert a.client.completion(fid, b.device_id)["completion"] == 100
    assert not Copies(a.client, fid, 2).is_safe(rec)
