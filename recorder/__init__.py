"""recorderpi: record, fingerprint, publish and share community audio on a Raspberry Pi."""

__version__ = "0.1.0"
