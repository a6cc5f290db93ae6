"""The live radio sink: an always-on sink that streams to Icecast without ever holding up audio.

`write()` runs on the pump thread, so it only copies the block into a bounded queue (at most
``radio.queue_seconds`` of audio) and returns; when the queue is full the block is dropped and
counted. A sender thread of its own encodes (its own Ogg encoder, separate from the recording's)
and sends. When Icecast restarts, refuses or the link stalls, the sender reconnects with
exponential backoff, and every new connection starts a fresh Ogg stream, headers first, as new
listeners need. `status()` tells the service what is going on, in one dict.

With ``radio.station`` the stream goes to the station's harbor (``radio.harbor_url``) rather
than to Icecast: the station (Liquidsoap) puts it on the air in place of the playlist.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from recorder import sidecar
from recorder.config import RadioConfig
from recorder.errors import RecorderError
from recorder.radio.icecast import IcecastSource
from recorder.radio.oggstream import OggStreamEncoder

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 30.0
IDLE_WAIT = 0.5  # the sender re-checks its state at least this often
# The sender encodes about this much audio per pass: per-call costs (numpy, libsndfile, Python)
# dominate with 1024-frame blocks. At 48 kHz that is 85 ms, small beside Ogg page intervals.
BATCH_FRAMES = 4096
# Switching off lets the sender end the Ogg stream cleanly for this long before hanging up hard.
HANGUP_GRACE = 1.0

# States reported by status()
OFF, CONNECTING, LIVE, ERROR = "off", "connecting", "live", "error"


class RadioSink:
    """Stream the audio written to it to the Icecast mount in `[radio]`, while live.

    Call `start()` once (it goes live if ``radio.live``), `set_live()` at run time, and
    `close()` (or the Sink protocol's `finish()`) at shutdown.
    """

    def __init__(
        self,
        radio: RadioConfig,
        samplerate: int,
        channels: int,
        *,
        source_factory: Callable[[], IcecastSource] | None = None,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        title: str = "",
        artist: str = "",
    ) -> None:
        self.radio = radio
        self.title, self.artist = title, artist
        self.samplerate = samplerate
        self.channels = channels
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        audio_info = f"samplerate={samplerate};channels={channels}"
        self._source_factory = source_factory or (
            lambda: IcecastSource.from_config(radio, audio_info)
        )
        self._max_frames = max(1, int(radio.queue_seconds * samplerate))
        # Shared with write(): held only for a few list operations, never across I/O.
        self._lock = threading.Lock()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._queued_frames = 0
        self._accepting = False  # connected and live: write() queues audio
        self._data = threading.Event()  # set by write(): audio is waiting
        self._control = threading.Event()  # set by set_live()/close(): state changed
        self._want_live = radio.live
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._source: IcecastSource | None = None
        self._state = OFF
        self._error: str | None = None
        self._last_error: str | None = None
        self._last_error_at: str | None = None
        self._bytes_sent = 0
        self._blocks_dropped = 0
        self._frames_dropped = 0
        self._connects = 0
        self._connected_since: str | None = None

    # --- the pump side (never blocks) -----------------------------------------------------------

    def write(self, block: np.ndarray) -> None:
        """Queue a copy of `block` for the stream, or drop it (counted) when the queue is full."""
        if not self._accepting:
            return
        frames = block.shape[0]
        copy = block.copy()
        with self._lock:
            if not self._accepting:
                return
            if self._queued_frames + frames > self._max_frames:
                self._blocks_dropped += 1
                self._frames_dropped += frames
                return
            self._queue.append(copy)
            self._queued_frames += frames
        self._data.set()

    @property
    def latency_sensitive(self) -> bool:
        """Live wanted (connecting or on the air): the pump then hands audio over at once."""
        return self._want_live

    def finish(self) -> dict[str, Any]:
        """Sink protocol: stop streaming and return the final status."""
        self.close()
        return self.status()

    def abort(self) -> None:
        """Sink protocol: stop streaming. Never raises."""
        try:
            self.close()
        except Exception:  # an always-on sink must not take shutdown down with it
            log.exception("radio sink failed to close")

    # --- control (any thread) -------------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread; it connects now if ``radio.live`` (or `set_live(True)`)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="radio-sender", daemon=True)
        self._thread.start()

    def set_live(self, on: bool) -> None:
        """Switch the stream on (connect, with retries) or off (hang up, drop queued audio)."""
        self._want_live = on
        if not on:
            self._stop_accepting()
            self._interrupt()
        self._control.set()
        self._data.set()

    def close(self, timeout: float = 5.0) -> None:
        """Hang up and stop the sender thread (waits up to `timeout` seconds)."""
        self._stopping = True
        self.set_live(False)
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict[str, Any]:
        """State (off, connecting, live, error), last error, counters, and since when live."""
        with self._lock:  # state and error change together (see _set_state)
            queued = self._queued_frames
            dropped, dropped_frames = self._blocks_dropped, self._frames_dropped
            state, error = self._state, self._error
        return {
            "state": state,
            "live_requested": self._want_live,
            "error": error,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "url": self.radio.harbor_url if self.radio.station else self.radio.url,
            "mount": self.radio.mount,
            "codec": self.radio.codec,
            "bytes_sent": self._bytes_sent,
            "blocks_dropped": dropped,
            "seconds_dropped": round(dropped_frames / self.samplerate, 3),
            "queued_seconds": round(queued / self.samplerate, 3),
            "connects": self._connects,
            "reconnects": max(0, self._connects - 1),
            "connected_since": self._connected_since,
        }

    # --- the sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self.backoff_initial
        while not self._stopping:
            if not self._want_live:
                self._set_state(OFF, error=None)
                self._wait(None)
                continue
            self._set_state(CONNECTING)
            try:
                source = self._source_factory()
                self._source = source
                source.connect()
            except RecorderError as exc:
                self._source = None
                self._fail(str(exc))
                self._wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            backoff = self.backoff_initial
            self._went_live()
            lost = self._stream_until_lost(source)
            if lost and self._want_live and not self._stopping:
                self._fail(lost)
                self._wait(backoff)
        self._set_state(OFF)

    def _stream_until_lost(self, source: IcecastSource) -> str | None:
        """Stream on `source` until switched off (None) or the link fails (the reason)."""
        try:
            self._stream(source)
            return None
        except RecorderError as exc:
            return str(exc)
        except Exception as exc:  # the encoder: report it and retry, never kill the sender
            log.exception("radio stream failed")
            return f"radio stream failed: {type(exc).__name__}: {exc}"
        finally:
            self._stop_accepting()
            self._source = None
            self._connected_since = None
            source.close()

    def _stream(self, source: IcecastSource) -> None:
        """Encode and send queued audio until switched off; raise when the link fails."""
        encoder = OggStreamEncoder.from_config(self.radio, self.samplerate, self.channels,
                                               title=self.title, artist=self.artist)
        try:
            with self._lock:
                self._accepting = True
            while self._want_live and not self._stopping:
                self._data.clear()
                block = self._pop_batch()
                if block is None:
                    self._data.wait(IDLE_WAIT)
                    continue
                data = encoder.encode(block)
                if data:
                    source.send(data)
                    self._bytes_sent += len(data)
                if block.shape[0] < BATCH_FRAMES:
                    # Caught up with live: let a batch's worth of audio gather.
                    time.sleep(BATCH_FRAMES / self.samplerate)
            # Switched off cleanly: end the Ogg stream properly for the listeners.
            source.send(encoder.close())
        finally:
            encoder.close()

    def _pop_batch(self) -> np.ndarray | None:
        """Queued blocks joined, about BATCH_FRAMES of them (all there are, if fewer)."""
        blocks, frames = [], 0
        with self._lock:
            while self._queue and frames < BATCH_FRAMES:
                blocks.append(self._queue.popleft())
                frames += blocks[-1].shape[0]
            self._queued_frames -= frames
        if not blocks:
            return None
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)

    def _set_state(self, state: str, **error: str | None) -> None:
        """Change the state (and, when given, the error) at once for status() readers."""
        with self._lock:
            self._state = state
            if "error" in error:
                self._error = error["error"]

    def _went_live(self) -> None:
        self._connects += 1
        self._connected_since = sidecar.utc_iso(time.time())
        self._set_state(LIVE, error=None)
        url = self.radio.harbor_url if self.radio.station else self.radio.url
        log.info("radio live on %s%s", url, self.radio.mount)

    def _fail(self, message: str) -> None:
        if message != self._error:
            log.warning("radio: %s", message)
        self._last_error = message
        self._last_error_at = sidecar.utc_iso(time.time())
        self._set_state(ERROR, error=message)

    def _stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False
            self._queue.clear()
            self._queued_frames = 0

    def _interrupt(self) -> None:
        """Soon wake a sender blocked in a send: switching off must not wait for a stalled link,
        but a healthy one gets HANGUP_GRACE to send the stream's last pages."""
        source = self._source
        if source is not None:
            timer = threading.Timer(HANGUP_GRACE, source.interrupt)
            timer.name = "radio-hangup"  # named for the thread table and py-spy dumps
            timer.daemon = True
            timer.start()

    def _wait(self, timeout: float | None) -> None:
        """Sleep until `timeout` or a state change (never woken by mere audio)."""
        self._control.wait(timeout)
        self._control.clear()
