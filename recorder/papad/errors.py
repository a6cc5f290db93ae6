"""How a papad request failed, which decides what the outbox does next.

- :class:`UnavailableError`: papad as a whole cannot take requests now (down, timing out,
  overloaded, refusing our credentials). Retry later, and do not try other entries meanwhile.
- :class:`RetryableError`: this request failed in a way that may pass later (a 500).
- :class:`PermanentError`: papad refused this request (a 4xx); retrying the same request cannot
  help, so the entry is parked with the server's reason until someone fixes the cause.
"""

from __future__ import annotations

from recorder.errors import RemoteError


class PapadError(RemoteError):
    """A papad request failed; `retryable` says whether the same request may pass later."""

    retryable = False
    unavailable = False


class RetryableError(PapadError):
    """A transient failure of one request."""

    retryable = True


class UnavailableError(RetryableError):
    """papad cannot take any request now."""

    unavailable = True


class PermanentError(PapadError):
    """papad refused the request; the message carries its reason."""
