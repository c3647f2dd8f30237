"""realtime-speaker: the software of a hands-free Raspberry Pi smart speaker."""

__version__ = "0.1.0"
