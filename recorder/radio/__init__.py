"""Cow Radio: the live stream to Icecast and the station's playlist of recordings.

`oggstream` encodes int16 blocks to Ogg bytes as they arrive, `icecast` is the source client that
sends them, `recorder.sinks.radio` joins the two behind a bounded queue, and `playlist` writes
the station feed of recent recordings.
"""
