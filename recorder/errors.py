"""Errors the appliance reports, each with the exit code the CLI returns for it.

Every error a user can cause or meet (bad config, missing device, full disk,
unreadable file, papad refusing a request) is one of these: the CLI prints
``str(error)`` as a single line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class RecorderError(Exception):
    """Base class: a clear, one-line, user-facing failure."""

    exit_code = 1


class ConfigError(RecorderError):
    """A configuration file or value is invalid; the message names the key."""

    exit_code = 2


class DeviceError(RecorderError):
    """The audio device is missing, unusable or went away."""

    exit_code = 3


class NoAudioError(DeviceError):
    """The device is a hub (``audio.source = "none"``): it has no audio and records nothing."""

    def __init__(self, message: str = 'this device is a hub (audio.source = "none"): it '
                 "records nothing") -> None:
        super().__init__(message)


class DiskReserveError(RecorderError):
    """Free space is below the configured reserve: recording refused."""

    exit_code = 4


class InputFileError(RecorderError):
    """An input file is missing, unreadable or cannot be decoded."""

    exit_code = 5


class TooShortError(RecorderError):
    """Audio is too short (or empty) to fingerprint."""

    exit_code = 6


class RemoteError(RecorderError):
    """A remote service (papad, Syncthing, Icecast) refused or failed a request."""

    exit_code = 7


class ServiceError(RecorderError):
    """The running service could not be reached or refused a control command."""

    exit_code = 8
