"""Wiring: the one place where components are built from the configuration and connected.

Everything else receives its collaborators; only this module decides which ones exist for a
given config (acoupi's "program" idea): the source, the per-recording sinks, the publisher with
its enrichers and listeners.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from recorder.config import Config
from recorder.publish import Publisher
from recorder.pump import Pump
from recorder.session import SinkFactory
from recorder.sinks import Sink
from recorder.sources import AudioSource, open_source

log = logging.getLogger(__name__)


def sink_factories(cfg: Config) -> list[SinkFactory]:
    """Per-recording sinks beyond the journal, encoder and level meter every recording has."""
    return []


def build_publisher(cfg: Config) -> Publisher:
    """The publisher with the hooks this configuration asks for."""
    return Publisher(cfg)


def background_workers(cfg: Config) -> list[Any]:
    """Long-running helpers of the service, each with start()/stop() (and optionally status(),
    write() to receive audio, set_live(), on_pump_event())."""
    return []


def build_pump(cfg: Config, *, source_spec: str | None = None, realtime: bool = True,
               loop: bool = False,
               always_on: Sequence[Sink] = (),
               on_event: Callable[[str, dict[str, Any]], None] | None = None,
               publisher: Publisher | None = None) -> Pump:
    """Open the configured (or given) source and build a pump around it (not started)."""
    source: AudioSource = open_source(source_spec or cfg.audio.source, cfg.audio,
                                      realtime=realtime, loop=loop)
    return Pump(cfg, source, publisher or build_publisher(cfg), always_on=always_on,
                extra_sinks=sink_factories(cfg), on_event=on_event)
