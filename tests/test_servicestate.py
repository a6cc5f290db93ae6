"""The service's state machine (recorder.servicestate) as the tables in docs/ARCHITECTURE.md say.

Pure and quick: the machine does no I/O. The real service's behaviour through the same machine
is in tests/test_service.py and tests/test_never_lose.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recorder.servicestate import (
    LED_TABLE,
    TRANSITIONS,
    Armed,
    Disk,
    HubStarted,
    Lost,
    Machine,
    Opened,
    OpenFailed,
    Problem,
    ProblemKind,
    PumpDied,
    ServiceState,
    Stopping,
)

S = ServiceState
DOCS = Path(__file__).resolve().parent.parent / "docs" / "ARCHITECTURE.md"


def machine_in(state: ServiceState, disk: Disk = Disk.OK) -> Machine:
    m = Machine()
    m.state, m.disk = state, disk
    return m


def test_every_row_of_the_table_moves_where_it_says():
    assert machine_in(S.STARTING).fire(HubStarted()) is S.HUB
    for start in (S.STARTING, S.NO_DEVICE, S.FAILED):
        assert machine_in(start).fire(Opened()) is S.IDLE
        assert machine_in(start).fire(OpenFailed("no such device")) is S.NO_DEVICE
    for armed in (S.IDLE, S.RECORDING, S.DISK_FULL):
        assert machine_in(armed).fire(Armed(recording=True)) is S.RECORDING
        assert machine_in(armed).fire(Armed(recording=False)) is S.IDLE
        assert machine_in(armed, Disk.FULL).fire(Armed(recording=False)) is S.DISK_FULL
        assert machine_in(armed).fire(Lost("gone", "USB")) is S.NO_DEVICE
        assert machine_in(armed).fire(PumpDied("boom")) is S.FAILED
    for state in S:
        assert machine_in(state).fire(Stopping()) is S.STOPPING


def test_an_event_the_table_does_not_allow_changes_nothing(caplog):
    for state, event in ((S.HUB, Opened()), (S.HUB, Armed(recording=True)),
                         (S.NO_DEVICE, Lost("x", "y")), (S.IDLE, HubStarted()),
                         (S.STOPPING, Opened())):
        m = machine_in(state)
        assert m.fire(event) is state
    assert caplog.text.count("not a transition") == 5
    with pytest.raises(TypeError):
        Machine().fire("opened")  # type: ignore[arg-type]


def test_device_and_problem_follow_the_state_not_the_wording():
    m = Machine()
    m.fire(OpenFailed("no input device matches 'x'"))
    assert m.device_error == "no input device matches 'x'" and m.led() == "error"
    m.fire(Opened())
    assert m.device_error is None and m.led() == "idle"
    m.fire(Lost("stream stopped", "USB mic"))
    assert m.device_error == "audio from 'USB mic' stopped"
    assert m.problem is not None and m.problem.kind is ProblemKind.DEVICE
    # A disk check with room clears only a disk problem, whatever its message says.
    m.disk_checked(500, 500 << 20, low=False, full=False)
    assert m.problem is not None
    m.refused(Problem(ProblemKind.DISK, "anything at all"))
    m.disk_checked(500, 500 << 20, low=False, full=False)
    assert m.problem is None
    m.publish_failed("disk full", disk_full=True)
    assert m.problem.kind is ProblemKind.DISK and m.waiting_need == 0
    m.published()
    assert m.problem is None


def test_the_disk():
    m = machine_in(S.IDLE)
    assert m.disk_checked(1, 1 << 20, low=True, full=True) is True  # full: changed
    assert m.disk_full and m.disk_low and m.fire(Armed(recording=False)) is S.DISK_FULL
    assert m.led() == "disk_low"
    m.disk_low_seen("only 1 MB free")  # the pump's DiskLow keeps "full"
    assert m.disk is Disk.FULL
    assert m.disk_checked(900, 900 << 20, low=False, full=False) is True
    assert m.fire(Armed(recording=False)) is S.IDLE and m.problem is None
    m.disk_unavailable("sync root unavailable: gone")
    assert m.storage_error == "sync root unavailable: gone" and m.led() == "error"


def test_led_table_first_match_wins():
    assert machine_in(S.HUB).led() == "off"
    assert machine_in(S.FAILED).led() == "error"
    recording = machine_in(S.RECORDING, Disk.LOW)
    assert recording.led() == "recording"  # a low disk does not hide a recording
    recording.problem = Problem(ProblemKind.PUBLISH, "publishing failed: x")
    assert recording.led() == "recording"  # a problem while the disk is low: not an error
    recording.disk = Disk.OK
    assert recording.led() == "error"
    assert machine_in(S.IDLE).led(mesh_degraded=True) == "mesh_degraded"
    assert machine_in(S.IDLE, Disk.LOW).led(mesh_degraded=True) == "disk_low"
    assert machine_in(S.STARTING).led() == "idle"


def test_the_docs_show_the_same_tables():
    text = DOCS.read_text()
    section = text[text.index("## The service's states"):text.index("## The sink protocols")]
    documented = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)(?:\(\w+\))?` \| ([^|]+) \|",
                                                   section, re.M)}
    for event, sources, _target in TRANSITIONS:
        row = documented[event.__name__]
        if len(sources) < len(S):
            assert {s.strip("` ") for s in row.split(",")} == {str(s) for s in sources}, event
    leds = re.findall(r"^\| `(\w+)` \| ", section[section.index("| LED | when |"):], re.M)
    assert leds == [led for led, _, _ in LED_TABLE]
