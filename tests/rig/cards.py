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
    from collections.abc import Callable, Iterator

    from device.audio.echo_memory import PaceMemory
    from device.audio.reference import PlaybackReference

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


class Cards:
    """A speaker and a microphone, each on its own clock, driving a playback reference as their
    drivers would: the speaker's clock runs ``speaker_ppm`` fast of the system clock, the
    microphone's ``mic_ppm``; ``play(first)`` gives the PERIOD samples the speaker plays from
    its sample ``first`` on."""

    def __init__(self, ref: PlaybackReference, play: Callable[[int], np.ndarray], speaker_ppm: float, mic_ppm: float,
                 *, seed: int = 0) -> None:
        self.ref, self.play = ref, play
        self.rng = np.random.default_rng(seed)
        self.spk, self.mic = RATE * (1 + speaker_ppm * 1e-6), RATE * (1 + mic_ppm * 1e-6)  # samples per system second
        self.t0 = time.monotonic() + 1.0  # when the speaker starts (the reference's timeline starts when it is made)

    def frames(self, n: int) -> Iterator[tuple[int, float, float]]:
        """For each of ``n`` microphone frames, once the speaker's periods up to then are written:
        its first sample, when its last sample was captured and when the capture thread reads it
        (up to 10 ms later), on the system clock."""
        written = 0
        for _ in range(HELD // PERIOD):
            self.ref.written(self.play(written), RATE, queued_before=written, t=self.t0)
            written += PERIOD
        read = 0
        t_write, t_read = self.t0, self.t0 + FRAME / self.mic
        while read < n * FRAME:
            if t_write <= t_read:  # the speaker drained a period: the next one is written
                # (as a card's driver reports it: its pointer moves in steps, so up to a period less)
                self.ref.written(self.play(written), RATE, queued_before=HELD - int(self.rng.integers(0, PERIOD + 1)),
                                 t=t_write + float(self.rng.uniform(0, 0.002)))
                written += PERIOD
                t_write = self.t0 + (written - HELD) / self.spk
            else:  # the microphone delivered a frame
                yield read, t_read, t_read + float(self.rng.uniform(0, 0.01))
                read += FRAME
                t_read = self.t0 + (read + FRAME) / self.mic


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
    x = np.concatenate([far.astype(np.float32), np.zeros(HELD + PERIOD, dtype=np.float32)])
    cards = Cards(ref, lambda first: x[first : first + PERIOD], speaker_ppm, mic_ppm, seed=seed)
    heard = soxr.resample(far.astype(np.float64) / 32768.0, cards.spk, cards.mic, quality="VHQ") * 32768.0
    frames = len(heard) // FRAME - 1
    mic = rm.to_int16(room.echo(heard[: frames * FRAME], ref_rms=rm.active_rms(far / 32768.0)) + room.noise(frames * FRAME))
    run = CardsRun(mic, np.zeros_like(mic), np.zeros_like(mic))
    for a, _, t in cards.frames(frames):
        f, p = ref.read(t, FRAME), ref.played.read(t, FRAME)
        run.far[a : a + FRAME] = f
        run.session[a : a + FRAME] = fe.process16k(mic[a : a + FRAME], f, p)
        run.settled.append(fe.echo_settled)
        run.lag_ms.append(fe.echo_lag_measured_ms)
    run.ratio_ppm = ref.clock_ratio_ppm
    return run
