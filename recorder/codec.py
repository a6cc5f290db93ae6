"""Codec settings: the one place that knows how libsndfile's knobs map to codec settings and
which sample rates each codec can code.

soundfile exposes a single ``compression_level`` (0..1) for OGG. libsndfile maps it as
Vorbis quality = 1 - level (oggenc's -q4 is quality 0.4, so level 0.6) and Opus bitrate =
((1 - level) x 250000 + 6000) x channels bit/s (measured on the bundled libsndfile 1.2.2).
Opus itself only codes 8, 12, 16, 24 and 48 kHz.
"""

from __future__ import annotations

CODECS = ("vorbis", "opus")
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
SUBTYPES = {"vorbis": "VORBIS", "opus": "OPUS"}


def vorbis_level(quality: float) -> float:
    """soundfile compression_level for oggenc quality `quality` (-1..10).

    libsndfile's scale stops at oggenc's q0, so negative qualities encode as q0.
    """
    return min(1.0, max(0.0, 1.0 - quality / 10.0))


def opus_level(kbps_per_channel: float) -> float:
    """soundfile compression_level for an Opus bitrate in kbit/s per channel (6..256)."""
    return min(1.0, max(0.0, 1.0 - (kbps_per_channel * 1000.0 - 6000.0) / 250000.0))


def compression_level(codec: str, vorbis_quality: float, opus_bitrate: float) -> float:
    """soundfile's compression_level for `codec` at its configured setting."""
    return vorbis_level(vorbis_quality) if codec == "vorbis" else opus_level(opus_bitrate)


def unsupported_rate(codec: str, samplerate: int) -> str | None:
    """Why `codec` cannot code `samplerate` Hz, or None when it can."""
    if codec == "opus" and samplerate not in OPUS_RATES:
        rates = ", ".join(str(r) for r in OPUS_RATES)
        return f"Opus cannot encode {samplerate} Hz (it codes {rates} Hz)"
    return None
