"""The status LED's patterns, read back from the mock pin's state history.

Durations are only checked from below (a loaded machine makes steps longer, never shorter),
except where a generous upper bound is needed to tell a pattern's short and long steps apart.
"""

from __future__ import annotations

import time

import pytest

from recorder.led import FLASH, PATTERNS, NullLed, StatusLed, open_status_led

PIN = 27
SLACK = 0.02  # timer granularity: a step may end this much early by the clock's reckoning


@pytest.fixture
def led(factory):
    with StatusLed(PIN) as made:
        yield made


def wait_states(pin, count: int, timeout: float = 15.0) -> list:
    """The pin's history once it holds at least `count` entries (the first is the start)."""
    end = time.monotonic() + timeout
    while len(pin.states) < count and time.monotonic() < end:
        time.sleep(0.01)
    assert len(pin.states) >= count, f"only {len(pin.states)} changes: {pin.states}"
    return list(pin.states)


def start(led: StatusLed, factory, state: str):
    pin = factory.pin(PIN)
    assert not pin.state  # starts off
    pin.clear_states()
    led.set_state(state)
    return pin


def assert_follows(history, pattern, cycles_from: int = 1) -> None:
    """history[1:] walks through `pattern` from its first step: each state matches the step
    and lasted at least the step's time (history[i+1].timestamp is how long state i lasted)."""
    walked = history[cycles_from:]
    for i, entry in enumerate(walked):
        on, seconds = pattern[i % len(pattern)]
        assert entry.state == on, f"step {i}: {walked}"
        if i + 1 < len(walked) and seconds is not None:
            assert walked[i + 1].timestamp >= seconds - SLACK, f"step {i} too short: {walked}"


def test_patterns_are_distinct():
    shapes = {name: tuple(steps) for name, steps in PATTERNS.items()}
    assert len(set(shapes.values())) == len(shapes)
    assert set(PATTERNS) == {"idle", "recording", "error", "disk_low", "mesh_degraded", "off"}


def test_mesh_degraded_is_a_long_blink(led, factory):
    pin = start(led, factory, "mesh_degraded")
    history = wait_states(pin, 4)  # on (1 s), off (0.5 s), on
    assert_follows(history, PATTERNS["mesh_degraded"])
    assert led.state == "mesh_degraded"


def test_idle_is_a_slow_heartbeat(led, factory):
    pin = start(led, factory, "idle")
    history = wait_states(pin, 4)  # on, off (1.9 s), on
    assert_follows(history, PATTERNS["idle"])
    assert led.state == "idle"


def test_error_blinks_fast(led, factory):
    pin = start(led, factory, "error")
    history = wait_states(pin, 9)
    assert_follows(history, PATTERNS["error"])
    # "Fast": the error blink's whole cycle is shorter than the idle heartbeat's flash step
    # pair by design (the durations above are checked from below: load only stretches them).
    assert sum(t for _, t in PATTERNS["error"]) < sum(t for _, t in PATTERNS["idle"]) / 5


def test_disk_low_is_a_double_blink(led, factory):
    pin = start(led, factory, "disk_low")
    history = wait_states(pin, 7)  # on off on OFF(1 s) on off
    assert_follows(history, PATTERNS["disk_low"])
    # The pause (the 4th step) is clearly longer than the gap between the two blinks.
    assert history[5].timestamp > history[3].timestamp + 0.4


def turned_off(led: StatusLed, pin) -> list:
    """Switch the LED off and return the whole history once the pin is off: the LED thread
    works in order, so anything it did before the switch is in there."""
    led.set_state("off")
    end = time.monotonic() + 15
    while pin.state and time.monotonic() < end:
        time.sleep(0.01)
    assert not pin.state and led.state == "off"
    return list(pin.states)


def test_recording_is_solid_on(led, factory):
    pin = start(led, factory, "recording")
    wait_states(pin, 2)
    time.sleep(0.5)  # the time it must stay on, uninterrupted
    history = turned_off(led, pin)
    assert [s.state for s in history] == [False, True, False]
    assert history[2].timestamp >= 0.5 - SLACK


def test_same_state_does_not_restart_the_pattern(led, factory):
    pin = start(led, factory, "idle")
    wait_states(pin, 3)  # off (start), the blip, then the long pause began
    led.set_state("idle")  # repeated by the daemon: no restart (a restart blips at once)
    history = wait_states(pin, 4)
    assert history[3].state is True
    assert history[3].timestamp >= PATTERNS["idle"][1][1] - SLACK  # the pause ran its course
    assert [s.state for s in turned_off(led, pin)][:5] == [False, True, False, True, False]


def test_flash_returns_to_recording(led, factory):
    pin = start(led, factory, "recording")
    wait_states(pin, 2)
    led.flash()
    history = wait_states(pin, 2 + len(FLASH))
    assert_follows(history[2:], FLASH, cycles_from=0)
    assert led.state == "recording"
    time.sleep(0.4)  # back to solid on, and staying there
    history = turned_off(led, pin)
    assert [s.state for s in history] == [False, True] + [on for on, _ in FLASH] + [False]
    assert FLASH[-1][0] and history[-1].timestamp >= 0.4 - SLACK


def test_flash_returns_to_heartbeat_from_its_start(factory):
    # A heartbeat with a long "on" step, so the flash surely lands inside it even under load.
    beat = [(True, 1.0), (False, 0.3)]
    with StatusLed(PIN, patterns={**PATTERNS, "idle": beat}) as led:
        pin = start(led, factory, "idle")
        wait_states(pin, 2)
        led.flash()
        n = 2 + len(FLASH)
        history = wait_states(pin, n + 2)
        assert [s.state for s in history[2:n]] == [on for on, _ in FLASH]
        # FLASH ends on and the beat restarts on: the next change is the beat's off, a full
        # "on" step after the flash ended, then the beat goes on again.
        assert [s.state for s in history[n : n + 2]] == [False, True]
        assert history[n].timestamp >= 1.0 - SLACK
        assert history[n + 1].timestamp >= 0.3 - SLACK
        assert led.state == "idle"


def test_state_change_during_flash_is_shown_after_it(led, factory):
    pin = start(led, factory, "recording")
    wait_states(pin, 2)
    led.flash()
    led.set_state("off")
    history = wait_states(pin, 2 + len(FLASH) + 1)
    assert [s.state for s in history[2 : 2 + len(FLASH)]] == [on for on, _ in FLASH]
    assert history[2 + len(FLASH)].state is False


def test_unknown_state_is_refused(led):
    with pytest.raises(ValueError, match="unknown LED state 'party'"):
        led.set_state("party")
    with pytest.raises(ValueError):
        NullLed().set_state("party")


def test_close_turns_off_and_frees_the_pin(factory):
    led = StatusLed(PIN, initial="recording")
    wait_states(factory.pin(PIN), 2)
    led.close()
    led.close()
    assert not factory.pin(PIN).state
    StatusLed(PIN).close()  # the pin is free again


def test_open_status_led_follows_config(factory, cfg_factory):
    null = open_status_led(cfg_factory(gpio={"led_pin": 0}).gpio)
    assert isinstance(null, NullLed)
    null.set_state("recording")
    null.flash()
    assert null.state == "recording"
    real = open_status_led(cfg_factory(gpio={"led_pin": PIN}).gpio)
    try:
        assert isinstance(real, StatusLed) and real.pin == PIN
    finally:
        real.close()
