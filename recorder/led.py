"""The status LED: one LED tells the appliance's state to people who never see a screen.

Each state is a pattern: a list of ``(on, seconds)`` steps played in a loop by a small thread;
a step with ``seconds=None`` holds until the state changes. :meth:`StatusLed.flash` plays a
short confirmation (a bookmark was dropped) once, then the current state's pattern resumes from
its start. Every change goes through the gpiozero pin, so tests read the timing back from the
mock pin's ``states`` history.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from gpiozero import LED

from recorder.config import GpioConfig

log = logging.getLogger(__name__)

Pattern = list[tuple[bool, float | None]]

IDLE = "idle"
RECORDING = "recording"
ERROR = "error"
DISK_LOW = "disk_low"
MESH_DEGRADED = "mesh_degraded"
OFF = "off"

PATTERNS: dict[str, Pattern] = {
    # Ready and armed: a short blip every two seconds, alive but unobtrusive.
    IDLE: [(True, 0.1), (False, 1.9)],
    # Recording: unmistakable and steady.
    RECORDING: [(True, None)],
    # Something needs a person (no audio device, publish failing): fast even blinking.
    ERROR: [(True, 0.1), (False, 0.1)],
    # Disk nearly full: a double blink, then a pause.
    DISK_LOW: [(True, 0.15), (False, 0.15), (True, 0.15), (False, 1.0)],
    # The mesh needs a look (a peer away, folders out of sync, a duplicate id), recording
    # works: a long blink, then a short pause.
    MESH_DEGRADED: [(True, 1.0), (False, 0.5)],
    OFF: [(False, None)],
}

# Three quick blinks that start dark, so they are visible on top of the solid recording light.
FLASH: Pattern = [(False, 0.08), (True, 0.08)] * 3


class StatusLed:
    """Drive one LED (BCM `pin`) with the pattern of the current :attr:`state`.

    Thread-safe: :meth:`set_state` and :meth:`flash` only hand over work to the LED thread and
    return at once. Setting the state it already has changes nothing (no heartbeat restart).
    """

    def __init__(
        self,
        pin: int,
        *,
        initial: str = OFF,
        patterns: dict[str, Pattern] | None = None,
        flash_pattern: Pattern | None = None,
        pin_factory: Any = None,
    ) -> None:
        self.pin = pin
        self._patterns = dict(PATTERNS if patterns is None else patterns)
        self._flash = list(FLASH if flash_pattern is None else flash_pattern)
        self._check(initial)
        self._state = initial
        self._generation = 0  # bumped on every change the thread must notice
        self._flashes = 0
        self._closed = False
        self._cond = threading.Condition()
        self._led = LED(pin, pin_factory=pin_factory)
        self._thread = threading.Thread(target=self._run, name=f"gpio{pin}-led", daemon=True)
        self._thread.start()

    @property
    def state(self) -> str:
        """The current state name (a flash does not change it)."""
        with self._cond:
            return self._state

    def set_state(self, state: str) -> None:
        """Show `state` (one of the keys of the patterns). Raises ValueError for unknown names."""
        self._check(state)
        with self._cond:
            if state == self._state:
                return
            self._state = state
            self._generation += 1
            self._cond.notify_all()

    def flash(self) -> None:
        """Play the confirmation flash once, then resume the current state's pattern."""
        with self._cond:
            # Queue at most two: a burst of bookmarks must not keep the LED busy for long.
            self._flashes = min(self._flashes + 1, 2)
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the pattern thread, switch the LED off and release the pin. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)
        self._led.off()
        self._led.close()

    def __enter__(self) -> StatusLed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, state: str) -> None:
        if state not in self._patterns:
            raise ValueError(f"unknown LED state {state!r} (known: {', '.join(self._patterns)})")

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                generation = self._generation
                if self._flashes:
                    self._flashes -= 1
                    steps, once = self._flash, True
                else:
                    steps, once = self._patterns[self._state], False
            if not self._play(steps, generation, once):
                return

    def _play(self, steps: Pattern, generation: int, once: bool) -> bool:
        """Play `steps` (looping unless `once`) until the generation changes; False when closed.

        A flash (`once`) is not interrupted by state changes, only by close.
        """
        while True:
            for on, seconds in steps:
                self._led.value = on
                with self._cond:
                    if once:
                        self._cond.wait_for(lambda: self._closed, timeout=seconds)
                    else:
                        self._cond.wait_for(
                            lambda: self._closed or self._generation != generation,
                            timeout=seconds,
                        )
                    if self._closed:
                        return False
                    if not once and self._generation != generation:
                        return True
            if once:
                return True


class NullLed:
    """Same interface as :class:`StatusLed` for an appliance without an LED."""

    def __init__(self, initial: str = OFF) -> None:
        self._state = initial

    @property
    def state(self) -> str:
        return self._state

    def set_state(self, state: str) -> None:
        if state not in PATTERNS:
            raise ValueError(f"unknown LED state {state!r} (known: {', '.join(PATTERNS)})")
        self._state = state

    def flash(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullLed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_status_led(gpio: GpioConfig, *, pin_factory: Any = None) -> StatusLed | NullLed:
    """The LED configured in `gpio` (`led_pin`), or a :class:`NullLed` when there is none."""
    if gpio.led_pin is None:
        return NullLed()
    return StatusLed(gpio.led_pin, pin_factory=pin_factory)
