"""Two sound cards in simulated time: a speaker and a microphone, each on its own clock.

The product's playback reference is driven as sound cards drive it (the speaker drains 20 ms
periods, holds 200 ms and reports its queue as a driver does, up to a period short; the
microphone delivers 80 ms frames, read up to 10 ms late), with timestamps computed from each
card's clock instead of waited for, so minutes of audio run in seconds. The microphone hears what
the speaker played through a room (:mod:`tests.rig.room`), resampled onto its own clock, as
sound is. The echo front-end runs on every frame, as the capture thread runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import soxr

from tests.rig import room as rm

if TYPE_CHECKING:
    from device.audio.echo_pace import PaceMemory

RATE = 16000
FRAME = 1280
PERIOD, HELD = 320, 3200


@dataclass
class CardsRun:
    """What one run gave: per 80 ms frame, the microphone, the session's audio, AEC3's far end,
    whether the canceller had settled, and the echo's delay behind the reference as last measured
    (ms, None before found); and the speaker's pace the reference was told (ppm of the microphone's)."""

    mic: np.ndarray
    session: np.ndarray
    far: np.ndarray
    settled: list[bool] = field(default_factory=list)
    lag_ms: list[float | None] = field(default_factory=list)
    ratio_ppm: float = 0.0


def play_through_cards(far: np.ndarray, room: rm.Room, speaker_ppm: float, mic_ppm: float, *,
                       follow: bool = True, memory: PaceMemory | None = None, seed: int = 0) -> CardsRun:
    """``far`` (int16, 16 kHz) played by a speaker whose clock runs ``speaker_ppm`` fast of the
    system clock, heard through ``room`` by a microphone ``mic_ppm`` fast. ``follow=False``: the
    front-end keeps the echo's drift to itself (the reference is not told the speaker's pace).
    ``memory``: the pace kept there is the reference's from the start, and each new one is kept
    there (as the daemon does across restarts)."""
    from device.audio.echo import EchoFrontEnd
    from device.audio.reference import PlaybackReference

    ref = PlaybackReference()
    fe = EchoFrontEnd(echo_cancellation=True, reference=ref if follow else None)
    if memory is not None:
        ref.adjust_pace(memory.load() or 0.0)
        fe.on_pace = memory.save
    rng = np.random.default_rng(seed)
    spk, mic_rate = RATE * (1 + speaker_ppm * 1e-6), RATE * (1 + mic_ppm * 1e-6)
    heard = soxr.resample(far.astype(np.float64) / 32768.0, spk, mic_rate, quality="VHQ") * 32768.0
    frames = len(heard) // FRAME - 1
    mic = rm.to_int16(room.echo(heard[: frames * FRAME], ref_rms=rm.active_rms(far / 32768.0)) + room.noise(frames * FRAME))
    x = np.concatenate([far.astype(np.float32), np.zeros(HELD + PERIOD, dtype=np.float32)])
    t0 = time.monotonic() + 1.0  # (the reference's timeline starts when it is made)
    written = read = 0
    for _ in range(HELD // PERIOD):
        ref.written(x[written : written + PERIOD], RATE, queued_before=written, t=t0)
        written += PERIOD
    run = CardsRun(mic, np.zeros_like(mic), np.zeros_like(mic))
    t_write, t_read = t0, t0 + FRAME / mic_rate
    while read < frames * FRAME:
        if t_write <= t_read:  # the speaker drained a period: the next one is written
            ref.written(x[written : written + PERIOD], RATE, queued_before=HELD - int(rng.integers(0, PERIOD + 1)),
                        t=t_write + float(rng.uniform(0, 0.002)))
            written += PERIOD
            t_write = t0 + (written - HELD) / spk
        else:  # the microphone delivered a frame
            t = t_read + float(rng.uniform(0, 0.01))
            f, p = ref.read(t, FRAME), ref.played.read(t, FRAME)
            run.far[read : read + FRAME] = f
            run.session[read : read + FRAME] = fe.process16k(mic[read : read + FRAME], f, p)
            run.settled.append(fe.echo_settled)
            run.lag_ms.append(fe.echo_lag_measured_ms)
            read += FRAME
            t_read = t0 + (read + FRAME) / mic_rate
    run.ratio_ppm = ref.clock_ratio_ppm
    return run
