"""Physical triggers: buttons and a switch on GPIO pins, debounced in our own code.

gpiozero's ``bounce_time`` is not used: the mock pin factory ignores it and real switches bounce
on release too, where gpiozero's tracker misbehaves. Instead every edge only records *when* it
happened; a worker thread accepts a new level once no edge has been seen for ``debounce_ms`` and
the pin reads a level different from the last accepted one. Timestamps are those of the first
edge of a burst, so a press is dated when the contact first closed, not when the bounce ended.

A record button maps to two actions that never both fire for one press:

* a **short press** (released before ``long_press`` seconds) fires on release and is dated at the
  press edge: the daemon starts a recording from that moment, pre-roll included;
* a **long press** fires exactly once, as soon as the stable press reaches ``long_press``, and is
  dated at the moment the hold threshold was reached (press edge + ``long_press``). That is the
  moment the user gets feedback (the LED flash), so the bookmark lands where they heard/saw it
  confirmed; a daemon that prefers the press moment can subtract ``long_press``.

The decision depends only on edge timestamps, never on when the worker thread happened to run,
so a late thread on a loaded machine still classifies every press the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice

from recorder.config import GpioConfig
from recorder.errors import RecorderError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Action = Callable[[float], None]  # called with the event's monotonic time

# Event names delivered by Triggers.
TOGGLE = "toggle"
MARK = "mark"
LIVE_ON = "live_on"
LIVE_OFF = "live_off"


class Debouncer:
    """The pure press/release state machine: no pins, no threads, no clock of its own.

    Feed it edge times with :meth:`edge` and call :meth:`step` with the current time and the
    current (raw) level at or after :meth:`deadline`; it returns the accepted transitions as
    ``(kind, at)`` pairs, kind one of ``press``, ``release``, ``short``, ``long``.
    """

    def __init__(self, debounce: float, long_press: float | None, pressed: bool = False) -> None:
        self.debounce = max(0.0, debounce)
        self.long_press = long_press
        self.pressed = pressed  # the accepted (stable) level
        self._burst_start: float | None = None  # first edge since the level was last accepted
        self._last_edge: float | None = None
        self._press_at = 0.0
        # A press already present at start-up never fires a long press: nobody just pressed it.
        self._long_done = pressed

    def edge(self, at: float) -> None:
        """Record that the raw level changed at time `at`."""
        if self._burst_start is None:
            self._burst_start = at
        self._last_edge = at

    def deadline(self) -> float | None:
        """When :meth:`step` next has something to decide, or None (wait for an edge)."""
        if self._last_edge is not None:
            return self._last_edge + self.debounce
        if self._long_pending():
            return self._press_at + self.long_press  # type: ignore[operator]
        return None

    def step(self, now: float, level: bool) -> list[tuple[str, float]]:
        """Accept what is due at `now` given the raw `level`; return the transitions."""
        out: list[tuple[str, float]] = []
        if self._last_edge is not None:
            if now < self._last_edge + self.debounce:
                return out  # still bouncing: decide nothing, not even a long press
            start = self._burst_start
            assert start is not None
            self._burst_start = self._last_edge = None
            if level != self.pressed:
                if level:
                    self.pressed, self._press_at, self._long_done = True, start, False
                    out.append(("press", start))
                else:
                    self.pressed = False
                    if not self._long_done:
                        held = start - self._press_at
                        if self.long_press is not None and held >= self.long_press:
                            # The threshold passed while the release was still bouncing.
                            out.append(("long", self._press_at + self.long_press))
                        else:
                            out.append(("short", self._press_at))
                    self._long_done = True
                    out.append(("release", start))
        if self._long_pending() and now >= self._press_at + self.long_press:  # type: ignore[operator]
            self._long_done = True
            out.append(("long", self._press_at + self.long_press))  # type: ignore[operator]
        return out

    def _long_pending(self) -> bool:
        return (
            self.pressed
            and not self._long_done
            and self.long_press is not None
            and self._last_edge is None
        )


class ButtonInput:
    """One debounced input pin (button or switch) with press/release/short/long callbacks.

    Callbacks receive the monotonic time of the event (see the module docstring) and run on this
    input's worker thread (or in the caller of :meth:`poll` when ``threaded=False``): keep them
    short and thread-safe. ``active_low=True`` enables the internal pull-up and treats a low pin
    as pressed; ``False`` enables the pull-down and treats high as pressed. ``long_press=None``
    disables long presses (every release is a short press).

    For tests, pass a fake `clock` and ``threaded=False``, then call :meth:`poll` after moving
    the clock: the outcome is then fully deterministic.
    """

    def __init__(
        self,
        pin: int,
        *,
        active_low: bool = True,
        debounce_ms: float = 30.0,
        long_press: float | None = 1.5,
        on_press: Action | None = None,
        on_release: Action | None = None,
        on_short_press: Action | None = None,
        on_long_press: Action | None = None,
        clock: Clock = time.monotonic,
        threaded: bool = True,
        pin_factory: Any = None,
    ) -> None:
        self.pin = pin
        self._clock = clock
        self._actions: dict[str, Action | None] = {
            "press": on_press,
            "release": on_release,
            "short": on_short_press,
            "long": on_long_press,
        }
        self._cond = threading.Condition()
        self._closed = False
        # bounce_time stays None on purpose: see the module docstring.
        self._device = DigitalInputDevice(pin, pull_up=active_low, pin_factory=pin_factory)
        try:
            self._fsm = Debouncer(debounce_ms / 1000.0, long_press, self._level())
            self._device.when_activated = self._edge
            self._device.when_deactivated = self._edge
        except BaseException:
            self._device.close()
            raise
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"gpio{pin}-input", daemon=True)
            self._thread.start()

    @property
    def pressed(self) -> bool:
        """The debounced level: True while the button is (stably) pressed or the switch on."""
        with self._cond:
            return self._fsm.pressed

    def poll(self) -> None:
        """Decide whatever is due now and run the callbacks in the calling thread.

        The worker thread does this by itself; call it directly only with ``threaded=False``.
        """
        with self._cond:
            events = self._step()
        self._dispatch(events)

    def close(self) -> None:
        """Stop the worker thread and release the pin. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._device.close()

    def __enter__(self) -> ButtonInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------

    def _level(self) -> bool:
        return bool(self._device.value)

    def _edge(self) -> None:
        # Runs in gpiozero's callback thread (or the test's driving thread): record and leave.
        with self._cond:
            self._fsm.edge(self._clock())
            self._cond.notify_all()

    def _step(self) -> list[tuple[str, float]]:
        if self._closed:
            return []
        return self._fsm.step(self._clock(), self._level())

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                deadline = self._fsm.deadline()
                if deadline is None:
                    self._cond.wait()
                else:
                    timeout = deadline - self._clock()
                    if timeout > 0:
                        self._cond.wait(timeout)
                events = self._step()
            self._dispatch(events)

    def _dispatch(self, events: list[tuple[str, float]]) -> None:
        for kind, at in events:
            log.debug("gpio%d %s at %.3f", self.pin, kind, at)
            action = self._actions[kind]
            if action is None:
                continue
            try:
                action(at)
            except Exception:
                # A failing handler must not kill the button: the next press has to work.
                log.exception("gpio%d: %s handler failed", self.pin, kind)


class Triggers:
    """All configured GPIO triggers, delivering named events to one callback.

    ``on_event(name, at_monotonic)`` receives:

    * ``toggle``: record button short press, dated at the press edge;
    * ``mark``: record button long press (dated at its press edge), or a press
      of the mark button (dated at its press edge; the mark button has a single action, so it
      fires on press rather than waiting for release);
    * ``live_on`` / ``live_off``: the live switch changed, dated at the switch edge.

    Whether a ``mark`` while idle means anything is the daemon's decision. Pins set to None in
    `gpio` are simply absent. Events arrive on the inputs' worker threads.
    """

    def __init__(
        self,
        gpio: GpioConfig,
        on_event: Callable[[str, float], None],
        *,
        clock: Clock = time.monotonic,
        threaded: bool = True,
        pin_factory: Any = None,
    ) -> None:
        self._on_event = on_event
        common: dict[str, Any] = {
            "active_low": gpio.active_low,
            "debounce_ms": gpio.debounce_ms,
            "clock": clock,
            "threaded": threaded,
            "pin_factory": pin_factory,
        }
        self.inputs: list[ButtonInput] = []
        self.live_switch: ButtonInput | None = None
        try:
            if gpio.record_pin is not None:
                self.inputs.append(
                    ButtonInput(
                        gpio.record_pin,
                        long_press=gpio.long_press,
                        on_short_press=self._emitter(TOGGLE),
                        # Dated at the press edge: the bookmark belongs to the moment the
                        # finger went down, not to when the hold was recognised.
                        on_long_press=self._emitter(MARK, shift=-gpio.long_press),
                        **common,
                    )
                )
            if gpio.mark_pin is not None:
                self.inputs.append(
                    ButtonInput(
                        gpio.mark_pin, long_press=None, on_press=self._emitter(MARK), **common
                    )
                )
            if gpio.live_pin is not None:
                self.live_switch = ButtonInput(
                    gpio.live_pin,
                    long_press=None,
                    on_press=self._emitter(LIVE_ON),
                    on_release=self._emitter(LIVE_OFF),
                    **common,
                )
                self.inputs.append(self.live_switch)
        except BaseException:
            self.close()
            raise

    @property
    def live(self) -> bool | None:
        """The live switch's debounced position (None without a switch): read it at start-up,
        since events only report changes."""
        return None if self.live_switch is None else self.live_switch.pressed

    def poll(self) -> None:
        """Run every input's pending decisions now (only needed with ``threaded=False``)."""
        for button in self.inputs:
            button.poll()

    def close(self) -> None:
        """Release every pin and stop the worker threads."""
        for button in self.inputs:
            button.close()
        self.inputs = []

    def __enter__(self) -> Triggers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emitter(self, name: str, shift: float = 0.0) -> Action:
        def emit(at: float) -> None:
            self._on_event(name, at + shift)

        return emit


def drive_mock_pin(pin_factory: Any, pin: int, steps: list[tuple[str, float]],
                   active_low: bool = True) -> None:
    """Simulate a button on gpiozero's mock pins: each step waits `delay` s, then "press"es or
    "release"s. For the demo and the tests of the running service; refuses real pins."""
    from gpiozero.pins.mock import MockFactory

    if not isinstance(pin_factory, MockFactory):
        raise RecorderError("pin driving is only available with the mock pin factory")
    mock = pin_factory.pin(pin)
    for action, delay in steps:
        time.sleep(delay)
        (mock.drive_low if (action == "press") == active_low else mock.drive_high)()


def mock_pin_driver(pin_factory: Any, active_low: bool = True
                    ) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The control socket's ``pin`` command (simulated presses, for the demo and the tests of
    the running service), or None unless the pins are gpiozero's mock pins: a real appliance
    has no such command."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    factory = pin_factory or Device.pin_factory
    if not isinstance(factory, MockFactory):
        return None

    def drive(request: dict[str, Any]) -> dict[str, Any]:
        steps = [(str(a), float(d)) for a, d in request.get("steps", [])]
        drive_mock_pin(factory, int(request["pin"]), steps, active_low)
        return {"message": "driven"}

    return drive
