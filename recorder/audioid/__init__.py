"""Audio ID: Chromaprint fingerprints of every recording, compared by bit error rate, and a
catalogue with an inverted index that finds a clip's source recording and position.

- `recorder.audioid.chroma`: streaming fingerprinting, encode/decode, fingerprint a file;
- `recorder.audioid.compare`: BER over offsets and the match decision;
- `recorder.audioid.catalogue`: the SQLite catalogue, its index, duplicates, rebuild.
"""
