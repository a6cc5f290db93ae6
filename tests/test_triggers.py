"""Debounced GPIO triggers, driven through gpiozero's mock pin factory.

Most tests use a fake clock and ``threaded=False`` so every decision happens at an exact,
chosen time (deterministic on any machine); a few run the real worker threads with generous
timeouts to prove the threaded path works the same.
"""

from __future__ import annotations

import threading
import time

import pytest

from recorder.triggers import ButtonInput, Debouncer, Triggers

REC, MARKP, LIVE = 17, 22, 23


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """Collects events from any thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, at: float) -> None:
        with self._lock:
            self.events.append((name, at))

    def names(self) -> list[str]:
        with self._lock:
            return [n for n, _ in self.events]


def drive(pin, pressed: bool, active_low: bool = True) -> None:
    (pin.drive_low if pressed == active_low else pin.drive_high)()


class Rig:
    """A fake-clock Triggers and the mock pins behind it."""

    def __init__(self, factory, cfg, active_low: bool = True) -> None:
        self.clock = FakeClock()
        self.got = Recorder()
        self.active_low = active_low
        self.factory = factory
        self.triggers = Triggers(cfg.gpio, self.got, clock=self.clock, threaded=False)

    def at(self, t: float) -> None:
        """Move the clock to `t` (relative to 100.0) and run what is due."""
        self.clock.t = 100.0 + t
        self.triggers.poll()

    def set(self, pin_no: int, pressed: bool, t: float) -> None:
        self.clock.t = 100.0 + t
        drive(self.factory.pin(pin_no), pressed, self.active_low)

    def storm(self, pin_no: int, pressed: bool, t: float, edges: int = 21, gap: float = 0.0002):
        """Bouncing contact: `edges` alternating edges `gap` s apart, ending at `pressed`;
        poll after each edge as a busy worker thread would."""
        for i in range(edges):
            level = pressed if (edges - 1 - i) % 2 == 0 else not pressed
            self.set(pin_no, level, t + i * gap)
            self.triggers.poll()

    def close(self) -> None:
        self.triggers.close()


@pytest.fixture
def rig(factory, cfg_factory):
    made = []

    def make(active_low: bool = True, **gpio):
        gpio = {"record_pin": REC, "led_pin": 0, "active_low": active_low, **gpio}
        r = Rig(factory, cfg_factory(gpio=gpio), active_low)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_single_press_gives_one_toggle_at_the_press_edge(rig):
    r = rig()
    r.set(REC, True, 0.0)
    r.at(0.010)  # inside the 30 ms debounce: nothing decided yet
    assert r.got.events == []
    r.at(0.040)
    assert r.triggers.inputs[0].pressed
    assert r.got.events == []  # a short press acts on release
    r.set(REC, False, 0.300)
    r.at(0.400)
    assert r.got.events == [("toggle", pytest.approx(100.0))]


@pytest.mark.parametrize("poll_during_storm", [True, False])
def test_bounce_storms_on_press_and_release_give_exactly_one_toggle(rig, poll_during_storm):
    r = rig()
    if poll_during_storm:
        r.storm(REC, True, 0.0)
    else:
        for i in range(41):
            r.set(REC, i % 2 == 0, i * 0.0001)
    r.at(0.100)
    assert r.triggers.inputs[0].pressed
    r.storm(REC, False, 0.500)
    r.at(0.600)
    r.at(5.000)
    assert r.got.events == [("toggle", pytest.approx(100.0))]


def test_storm_edges_slower_than_debounce_are_separate_presses(rig):
    # The same pin activity with gaps longer than the debounce is real pressing.
    r = rig()
    for k in range(3):
        r.set(REC, True, k * 0.2)
        r.at(k * 0.2 + 0.05)
        r.set(REC, False, k * 0.2 + 0.1)
        r.at(k * 0.2 + 0.15)
    assert r.got.names() == ["toggle"] * 3


def test_glitch_while_held_is_ignored(rig):
    r = rig(long_press=2.0)
    r.set(REC, True, 0.0)
    r.at(0.05)
    r.set(REC, False, 0.5)  # a 5 ms spike, shorter than the debounce
    r.set(REC, True, 0.505)
    r.at(0.6)
    assert r.triggers.inputs[0].pressed
    r.set(REC, False, 0.9)
    r.at(1.0)
    assert r.got.events == [("toggle", pytest.approx(100.0))]


def test_long_press_gives_one_mark_dated_at_the_press_and_no_toggle(rig):
    r = rig(long_press=1.5)
    r.storm(REC, True, 0.0)
    for k in range(1, 40):  # a busy worker polls all the time while held
        r.at(k * 0.05)
    assert r.got.events == [("mark", pytest.approx(100.0))]
    r.at(4.0)
    r.storm(REC, False, 4.0)
    r.at(4.2)
    r.at(10.0)
    assert r.got.events == [("mark", pytest.approx(100.0))]


def test_release_just_before_threshold_is_short_even_if_decided_late(rig):
    r = rig(long_press=1.5)
    r.set(REC, True, 0.0)
    r.at(0.1)
    r.storm(REC, False, 1.49)  # release begins before the threshold, bounces past it
    r.at(1.6)
    assert r.got.names() == ["toggle"]


def test_release_after_threshold_is_long_even_if_worker_was_late(rig):
    r = rig(long_press=1.5)
    r.set(REC, True, 0.0)
    r.at(0.1)
    # The worker did not run at 1.5 (loaded machine); the release began at 1.51.
    r.set(REC, False, 1.51)
    r.at(1.7)
    assert r.got.events == [("mark", pytest.approx(100.0))]


def test_press_release_press_quickly_gives_two_toggles(rig):
    r = rig()
    r.storm(REC, True, 0.0)
    r.at(0.05)
    r.storm(REC, False, 0.10)
    r.at(0.15)
    r.storm(REC, True, 0.20)
    r.at(0.25)
    r.storm(REC, False, 0.30)
    r.at(0.35)
    assert r.got.events == [("toggle", pytest.approx(100.0)), ("toggle", pytest.approx(100.2))]


def test_active_high_polarity(rig, factory):
    r = rig(active_low=False)
    pin = factory.pin(REC)
    assert pin.pull == "down" and not pin.state
    r.storm(REC, True, 0.0)  # drives high
    assert pin.state
    r.at(0.05)
    r.storm(REC, False, 0.2)
    r.at(0.3)
    assert r.got.names() == ["toggle"]


def test_active_low_uses_the_pull_up(rig, factory):
    rig()
    pin = factory.pin(REC)
    assert pin.pull == "up" and pin.state  # idle high; pressed pulls it to ground


def test_mark_button_marks_on_press_once_however_long(rig):
    r = rig(mark_pin=MARKP)
    r.storm(MARKP, True, 1.0)
    r.at(1.05)
    assert r.got.events == [("mark", pytest.approx(101.0))]
    r.at(9.0)  # held for ages: still one mark, no toggle
    r.storm(MARKP, False, 9.0)
    r.at(9.1)
    assert r.got.events == [("mark", pytest.approx(101.0))]


def test_live_switch_reports_on_and_off(rig):
    r = rig(record_pin=0, live_pin=LIVE)
    assert r.triggers.live is False
    r.storm(LIVE, True, 0.0)
    r.at(0.1)
    assert r.triggers.live is True
    r.at(30.0)  # a switch stays on: no long-press events
    r.storm(LIVE, False, 30.0)
    r.at(30.1)
    assert r.got.events == [("live_on", pytest.approx(100.0)), ("live_off", pytest.approx(130.0))]
    assert r.triggers.live is False


def test_no_pins_configured_means_no_inputs(rig):
    r = rig(record_pin=0)
    assert r.triggers.inputs == [] and r.triggers.live is None


def test_button_held_at_startup_fires_nothing():
    # (The mock pin cannot start low under a pull-up, so this drives the state machine.)
    fsm = Debouncer(0.03, 1.5, pressed=True)
    assert fsm.deadline() is None
    assert fsm.step(105.0, True) == []
    fsm.edge(106.0)
    assert fsm.step(106.1, False) == [("release", 106.0)]  # no short, no long


def test_failing_handler_does_not_break_the_button(factory):
    clock, got = FakeClock(), []

    def handler(at: float) -> None:
        got.append(at)
        raise RuntimeError("daemon bug")

    with ButtonInput(REC, clock=clock, threaded=False, on_short_press=handler) as button:
        for _ in range(2):
            factory.pin(REC).drive_low()
            clock.t += 0.1
            button.poll()
            factory.pin(REC).drive_high()
            clock.t += 0.1
            button.poll()
    assert len(got) == 2


def test_zero_debounce_accepts_at_once():
    fsm = Debouncer(0.0, 1.0)
    fsm.edge(5.0)
    assert fsm.deadline() == 5.0
    assert fsm.step(5.0, True) == [("press", 5.0)]
    fsm.edge(5.2)
    assert fsm.step(5.2, False) == [("short", 5.0), ("release", 5.2)]
    assert fsm.deadline() is None


def test_pins_are_released_on_close(factory, cfg_factory):
    cfg = cfg_factory(gpio={"record_pin": REC, "mark_pin": MARKP, "live_pin": LIVE})
    clock = FakeClock()
    first = Recorder()
    Triggers(cfg.gpio, first, clock=clock, threaded=False).close()
    # The same pins again (gpiozero refuses a pin still in use), and they work: the closed
    # instance hears nothing, the new one hears every button.
    got = Recorder()
    with Triggers(cfg.gpio, got, clock=clock, threaded=False) as again:
        for pin_no in (REC, MARKP, LIVE):
            factory.pin(pin_no).drive_low()
            clock.t += 0.1
            again.poll()
        factory.pin(REC).drive_high()
        clock.t += 0.1
        again.poll()
    assert sorted(got.names()) == ["live_on", "mark", "toggle"]
    assert first.events == []


# --- the real worker threads -----------------------------------------------------------------


def wait_until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def bounce(pin, final_low: bool, edges: int = 31) -> None:
    """Bounce as fast as Python can drive a pin, ending at the final level."""
    for i in range(edges):
        low = final_low if (edges - 1 - i) % 2 == 0 else not final_low
        (pin.drive_low if low else pin.drive_high)()


def threaded_triggers(cfg_factory, **gpio):
    got = Recorder()
    cfg = cfg_factory(gpio={"record_pin": REC, "debounce_ms": 50.0, **gpio})
    return Triggers(cfg.gpio, got), got


def clean_click(triggers, pin) -> None:
    """One clean press and release, each held until the debounce has decided it."""
    pin.drive_low()
    assert wait_until(lambda: triggers.inputs[0].pressed)
    pin.drive_high()
    assert wait_until(lambda: not triggers.inputs[0].pressed)


# Each test ends with a clean click whose toggle is awaited: the worker decides events in
# order, so anything extra the storms caused would sit before that last toggle.


def test_threaded_bounce_storms_give_one_toggle(factory, cfg_factory):
    triggers, got = threaded_triggers(cfg_factory, long_press=10.0)
    with triggers:
        pin = factory.pin(REC)
        before = time.monotonic()
        bounce(pin, final_low=True)
        after = time.monotonic()
        assert wait_until(lambda: triggers.inputs[0].pressed)
        bounce(pin, final_low=False)
        assert wait_until(lambda: got.events)
        clean_click(triggers, pin)
        assert wait_until(lambda: len(got.events) >= 2)
        assert got.names() == ["toggle", "toggle"]
        assert before <= got.events[0][1] <= after  # dated at the storm's press edge


def test_threaded_long_press_marks_once(factory, cfg_factory):
    triggers, got = threaded_triggers(cfg_factory, long_press=0.4)
    with triggers:
        pin = factory.pin(REC)
        pressed_at = time.monotonic()
        bounce(pin, final_low=True)
        bounced = time.monotonic()
        assert wait_until(lambda: got.events)
        bounce(pin, final_low=False)
        assert wait_until(lambda: not triggers.inputs[0].pressed)
        clean_click(triggers, pin)
        assert wait_until(lambda: len(got.events) >= 2)
        assert got.names() == ["mark", "toggle"]
        # Recognised after the hold time, dated at the press edge.
        assert pressed_at <= got.events[0][1] <= bounced


def test_threaded_press_release_press_gives_two_toggles(factory, cfg_factory):
    triggers, got = threaded_triggers(cfg_factory, long_press=10.0, mark_pin=MARKP)
    with triggers:
        pin = factory.pin(REC)
        for _ in range(2):
            bounce(pin, final_low=True)
            assert wait_until(lambda: triggers.inputs[0].pressed)
            bounce(pin, final_low=False)
            assert wait_until(lambda: not triggers.inputs[0].pressed)
        factory.pin(MARKP).drive_low()
        assert wait_until(lambda: len(got.events) == 3)
        clean_click(triggers, pin)
        assert wait_until(lambda: len(got.events) >= 4)
        names = got.names()
        assert sorted(names[:3]) == ["mark", "toggle", "toggle"] and names[3:] == ["toggle"]
