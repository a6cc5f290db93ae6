"""How a papad request failed, which decides what the outbox does next.

- :class:`UnavailableError`: papad as a whole cannot take requests now (down, timing out,
  overloaded, throttling us, refusing our credentials). Retry later, without limit, and do not
  try other entries meanwhile. `retry_after` (seconds) is papad's own ``Retry-After``, if any.
- :class:`ServerError`: papad answered a 5xx other than 502/503/504 (usually a 500). That is
  papad's bug or our request tripping it; retried, but only a bounded number of times for the
  same request before the outbox parks the entry with papad's answer.
- :class:`RetryableError`: any other transient failure of one request.
- :class:`PermanentError`: papad refused the request (a 4xx); retrying the same request cannot
  help, so the entry is parked with the server's reason until someone fixes the cause.

Every error made from an HTTP answer carries `status` and `request` (``"POST /api/v1/archive/"``).
"""

from __future__ import annotations

from recorder.errors import RemoteError


class PapadError(RemoteError):
    """A papad request failed; `retryable` says whether the same request may pass later."""

    retryable = False
    unavailable = False

    def __init__(self, message: str, *, status: int | None = None, request: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request = request
        self.retry_after = retry_after


class RetryableError(PapadError):
    """A transient failure of one request."""

    retryable = True


class ServerError(RetryableError):
    """papad answered 500 (or another 5xx that is not a gateway's): retried, but bounded."""


class UnavailableError(RetryableError):
    """papad cannot take any request now."""

    unavailable = True


class PermanentError(PapadError):
    """papad refused the request; the message carries its reason."""


def relabel(exc: PapadError, prefix: str) -> PapadError:
    """The same error (class and attributes) with `prefix` put before its message."""
    return type(exc)(f"{prefix}{exc}", status=exc.status, request=exc.request,
                     retry_after=exc.retry_after)


# What to set when papad wants the other scheme (one line, names the keys to change).
_SCHEME_FIX = {
    "bearer": 'this papad expects Bearer (JWT): set [papad] auth = "jwt" with username and '
              "password_file",
    "token": 'this papad expects Token: set [papad] auth = "token" with token_file',
}


def scheme_hint(expected: str) -> str:
    """The one-line fix when papad expects the `expected` scheme ("Token" or "Bearer")."""
    return _SCHEME_FIX.get(expected.strip().lower(), f"this papad expects {expected}")
