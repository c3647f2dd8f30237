"""Capture-side conversion: device frames (any rate, channels, S16/S32) -> 80 ms frames at
16 kHz and the same audio at 24 kHz, with soxr's streaming resampler."""

from __future__ import annotations

import numpy as np
import soxr

import alsaaudio

from device.audio.frames import FRAME_16K, FRAME_24K, SESSION_RATE, WAKE_RATE  # noqa: F401  (re-exported)

# soxr hands out 16 -> 24 kHz audio in uneven lumps (1468/2202 samples per 1280 in); holding this
# much back makes every 24 kHz frame exactly 1920 samples, at the cost of ~40 ms latency.
RESERVE_24K = 1024


def to_mono(raw: bytes, channels: int, fmt: int, channel: int = -1) -> np.ndarray:
    """Interleaved device bytes -> int16 mono (one channel, or the mean of all)."""
    if fmt == alsaaudio.PCM_FORMAT_S32_LE:
        x = (np.frombuffer(raw, dtype=np.int32) >> 16).astype(np.int16)
    else:
        x = np.frombuffer(raw, dtype=np.int16)
    if channels == 1:
        return x
    x = x[: len(x) - len(x) % channels].reshape(-1, channels)
    if 0 <= channel < channels:
        return np.ascontiguousarray(x[:, channel])
    return (x.sum(axis=1, dtype=np.int32) // channels).astype(np.int16)


class _Rate:
    """int16 mono at ``rate_in`` -> ``rate_out`` (identity when equal)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self._stream = None if rate_in == rate_out else soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x if self._stream is None else self._stream.resample_chunk(x)


class FrameAssembler:
    """Feed device reads, get complete (pcm16k, pcm24k) frames of 80 ms."""

    def __init__(self, rate: int, channels: int, fmt: int = alsaaudio.PCM_FORMAT_S16_LE, channel: int = -1) -> None:
        self.rate, self.channels, self.fmt, self.channel = rate, channels, fmt, channel
        self.reset()

    def reset(self) -> None:
        """Drop buffered audio and resampler history (after a gap such as mute)."""
        self._to16 = _Rate(self.rate, WAKE_RATE)
        self._to24 = _Rate(self.rate, SESSION_RATE)
        self._buf16 = bytearray()
        self._buf24 = bytearray()
        self._primed = False
        self._owed24 = 0

    def feed(self, raw: bytes) -> list[tuple[bytes, bytes]]:
        x = to_mono(raw, self.channels, self.fmt, self.channel)
        self._buf16 += self._to16(x).tobytes()
        self._buf24 += self._to24(x).tobytes()
        out: list[tuple[bytes, bytes]] = []
        while len(self._buf16) >= FRAME_16K * 2:
            pcm16 = bytes(self._buf16[: FRAME_16K * 2])
            del self._buf16[: FRAME_16K * 2]
            avail = len(self._buf24) // 2
            if not self._primed and avail >= FRAME_24K + RESERVE_24K:
                self._primed = True
            take = 0
            if self._primed:
                self._owed24 += FRAME_24K
                take = min(avail, self._owed24)
                self._owed24 -= take
            pcm24 = bytes(self._buf24[: take * 2])
            del self._buf24[: take * 2]
            out.append((pcm16, pcm24))
        return out
