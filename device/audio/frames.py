"""Audio facts shared by capture, wake word, sessions and playback; no ALSA needed to import.

Microphone audio moves in 80 ms frames: 16 kHz for the wake word (openWakeWord's step) and
24 kHz for the realtime session (its PCM rate in and out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FRAME_MS = 80
WAKE_RATE = 16000  # openWakeWord's input rate
SESSION_RATE = 24000  # the realtime API's PCM, in and out
FRAME_16K = WAKE_RATE * FRAME_MS // 1000  # 1280 samples
FRAME_24K = SESSION_RATE * FRAME_MS // 1000  # 1920 samples


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """80 ms of microphone audio."""

    seq: int
    pcm16k: bytes  # 1280 samples S16LE mono, for the wake word
    pcm24k: bytes  # the same 80 ms at 24 kHz S16LE mono (~1920 samples), for the session
    t: float  # time.monotonic() when the frame was read
    wake: Any = None  # a wake-word Detection, when the capture's analysis thread found one
    wake16k: bytes | None = None  # the wake engine's audio when it differs from pcm16k (see device.audio.echo)
    echo_settled: bool = True  # False while the echo canceller is too new (or the echo path too new) to trust

    @property
    def for_wake(self) -> bytes:
        """The 16 kHz audio the wake engine should hear."""
        return self.wake16k if self.wake16k is not None else self.pcm16k


__all__ = ["FRAME_16K", "FRAME_24K", "FRAME_MS", "SESSION_RATE", "WAKE_RATE", "AudioFrame"]
