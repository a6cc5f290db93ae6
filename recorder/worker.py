"""The service's worker seam: what `recorder.app` wires and `recorder.daemon` runs.

Its own module so that workers (the web page, the mesh keeper...) can name the types without
importing the wiring that builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Worker(Protocol):
    """A background part of the service: started after recovery, stopped at shutdown, and
    asked for its status by `recorder ctl status` (from the service's main thread)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


# How another thread asks the running service something: `daemon.Service.request`.
ServiceRequest = Callable[..., dict[str, Any]]

__all__ = ["ServiceRequest", "Worker"]
