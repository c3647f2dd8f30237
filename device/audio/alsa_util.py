"""Opening ALSA PCMs with pyalsaaudio: ask for what we like, accept what the device offers.

pyalsaaudio applies rate/channels/format on a best-effort basis (rate "near", channels and
format silently ignored when refused), so every open reads the result back and the caller
converts in software.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import alsaaudio

_LOG = logging.getLogger(__name__)

# Names of PCMs that open a sound card directly (never a FIFO through the file plugin).
_HW_PREFIXES = {"hw", "plughw", "sysdefault", "front", "dsnoop", "dmix"}

SUPPORTED_FORMATS = {alsaaudio.PCM_FORMAT_S16_LE: ("S16_LE", 2), alsaaudio.PCM_FORMAT_S32_LE: ("S32_LE", 4)}


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """What a PCM was really opened with."""

    rate: int
    channels: int
    format: int  # alsaaudio.PCM_FORMAT_*
    period: int  # frames
    periods: int
    buffer: int  # frames

    @property
    def sample_bytes(self) -> int:
        return SUPPORTED_FORMATS[self.format][1]

    @property
    def frame_bytes(self) -> int:
        return self.sample_bytes * self.channels

    def describe(self) -> str:
        name = SUPPORTED_FORMATS.get(self.format, (str(self.format), 0))[0]
        return (f"{self.rate} Hz, {self.channels} ch, {name}, period {self.period} frames "
                f"({self.period * 1000 // self.rate} ms) x {self.periods}")


def _open(device: str, kind: int, mode: int, rate: int, channels: int, fmt: int, period: int, periods: int) -> tuple[alsaaudio.PCM, PcmFormat]:
    pcm = alsaaudio.PCM(type=kind, mode=mode, device=device, rate=rate, channels=channels, format=fmt,
                        periodsize=period, periods=periods)
    try:
        info = pcm.info()
        got = PcmFormat(int(info["rate"]), int(info["channels"]), int(info["format"]), int(info["period_size"]),
                        int(info["periods"]), int(info["buffer_size"]))
    except Exception:
        pcm.close()
        raise
    return pcm, got


def open_pcm(device: str, *, capture: bool, rate: int, channels: int, period_ms: int, periods: int,
             nonblock: bool = False) -> tuple[alsaaudio.PCM, PcmFormat]:
    """Open ``device`` asking for S16_LE at ``rate``/``channels``; raises OSError naming the device.

    When the device picks another rate, it is reopened at that rate so the period keeps its
    duration (the rig's file PCM and many cards want a whole number of periods per chunk).
    """
    kind = alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK
    mode = alsaaudio.PCM_NONBLOCK if nonblock else alsaaudio.PCM_NORMAL
    what = "microphone" if capture else "speaker"
    if device.split(":", 1)[0] in _HW_PREFIXES and not nonblock:
        # A blocking open of a busy card waits until the other program lets go, and pyalsaaudio
        # holds the GIL meanwhile (the whole daemon would freeze): check with a non-blocking open.
        try:
            alsaaudio.PCM(type=kind, mode=alsaaudio.PCM_NONBLOCK, device=device).close()
        except alsaaudio.ALSAAudioError as exc:
            if "busy" in str(exc).lower():
                raise OSError(f"{what} ALSA PCM '{device}' is busy (another program is using it)") from None
            # Anything else: the real open below reports it.
    try:
        pcm, got = _open(device, kind, mode, rate, channels, alsaaudio.PCM_FORMAT_S16_LE, rate * period_ms // 1000, periods)
        if got.rate != rate or got.format not in SUPPORTED_FORMATS:
            pcm.close()
            fmt = got.format if got.format in SUPPORTED_FORMATS else alsaaudio.PCM_FORMAT_S32_LE
            pcm, got = _open(device, kind, mode, got.rate, got.channels, fmt, got.rate * period_ms // 1000, periods)
    except alsaaudio.ALSAAudioError as exc:
        raise OSError(f"cannot open {what} ALSA PCM '{device}': {exc}") from None
    if got.format not in SUPPORTED_FORMATS:
        pcm.close()
        raise OSError(f"{what} ALSA PCM '{device}' offers neither S16_LE nor S32_LE; use a 'plughw:' or 'plug' PCM")
    return pcm, got


def probe_input(pcm: str) -> str:
    """Open the microphone PCM briefly and describe it (``speaker check``); raises OSError."""
    handle, fmt = open_pcm(pcm, capture=True, rate=16000, channels=1, period_ms=80, periods=4)
    handle.close()
    return f"microphone '{pcm}': {fmt.describe()}"


def probe_output(pcm: str) -> str:
    """Open the speaker PCM briefly and describe it (``speaker check``); raises OSError."""
    handle, fmt = open_pcm(pcm, capture=False, rate=24000, channels=1, period_ms=20, periods=10)
    try:
        handle.drop()
    except alsaaudio.ALSAAudioError:
        pass
    handle.close()
    return f"speaker '{pcm}': {fmt.describe()}"
