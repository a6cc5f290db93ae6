"""Feeding a whole recording through its per-recording sinks in one go.

The pump feeds sinks a block at a time as audio arrives; an import (`recorder.importer`) and a
recovery (`recorder.recover`) have all the audio already and feed it in one loop. That loop has
one rule, kept here: every block to every sink in order, then every sink finished; any failure
on the way (a sink, or the blocks' own iterator refusing: too long, too short, unreadable)
aborts every sink, so no half-written staging file is left as if finished, and re-raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import numpy as np

from recorder.sinks import Sink, SinkFacts


def feed(sinks: Sequence[Sink], blocks: Iterable[np.ndarray]) -> list[SinkFacts]:
    """Write each of `blocks` to each of `sinks`, then finish them; return what each
    `finish()` returned, in the sinks' order. On any exception every sink is aborted
    (never raising itself) and the exception propagates."""
    try:
        for block in blocks:
            for sink in sinks:
                sink.write(block)
        return [sink.finish() for sink in sinks]
    except BaseException:
        for sink in sinks:
            with contextlib.suppress(Exception):
                sink.abort()
        raise


__all__ = ["feed"]
