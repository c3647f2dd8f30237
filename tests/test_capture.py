"""Capture through real ALSA file PCMs fed at real-time pace (issue 2)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from device.audio.capture import AudioFrame, Capture, ReadClock
from device.audio.ringbuffer import PreRoll
from device.config import AudioConfig


def tone(freq: float, seconds: float, rate: int = 16000, level: int = 8000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * level).astype(np.int16)


def peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


class Sink:
    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []
        self.status: list[str] = []
        self.new = asyncio.Event()

    def frame(self, f: AudioFrame) -> None:
        self.frames.append(f)
        self.new.set()

    async def until(self, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out after {timeout} s ({len(self.frames)} frames, status {self.status})"
            self.new.clear()
            try:
                await asyncio.wait_for(self.new.wait(), min(left, 0.2))
            except TimeoutError:
                pass

    def loud(self, start: int = 0) -> list[AudioFrame]:
        return [f for f in self.frames[start:] if np.abs(np.frombuffer(f.pcm16k, np.int16)).max() > 3000]


def start_capture(cfg: AudioConfig) -> tuple[Capture, Sink]:
    sink = Sink()
    cap = Capture(cfg, sink.frame, asyncio.get_running_loop(), on_status=sink.status.append)
    cap.start()
    return cap, sink


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pcm,rate,channels", [("test_mic", 0, 0), ("test_mic48", 48000, 2)])
async def test_frames_at_16k_and_24k_in_real_time(alsa_rig, pcm, rate, channels) -> None:
    mic = alsa_rig.start_mic(pcm)
    cap, sink = start_capture(AudioConfig(input=pcm, input_rate=rate, input_channels=channels))
    try:
        await sink.until(lambda: len(sink.frames) >= 3, 5)
        utt = mic.play(tone(440, 1.2))
        await sink.until(lambda: len(sink.loud()) >= 12, 5)
        t0, n0 = time.monotonic(), len(sink.frames)
        await sink.until(lambda: len(sink.frames) >= n0 + 12, 3)
        elapsed = time.monotonic() - t0
    finally:
        cap.stop()
    assert utt.wait(1)
    assert cap.format is not None and (cap.format.rate, cap.format.channels) == ((48000, 2) if rate else (16000, 1))
    # The card holds 2 s: a reader thread held up that long (AEC3's training on a slow board) loses nothing.
    assert cap.format.buffer >= 2 * cap.format.rate
    # Paced by the device: 12 frames of 80 ms take about 0.96 s, not a burst.
    assert 0.7 < elapsed < 1.4, elapsed
    assert all(len(f.pcm16k) == 2560 for f in sink.frames)
    assert [f.seq for f in sink.frames] == list(range(sink.frames[0].seq, sink.frames[0].seq + len(sink.frames)))
    loud = sink.loud()
    pcm16 = b"".join(f.pcm16k for f in loud[2:-2])
    pcm24 = b"".join(f.pcm24k for f in loud[2:-2])
    assert abs(len(pcm24) / len(pcm16) - 1.5) < 0.02
    assert abs(peak_hz(pcm16, 16000) - 440) < 5
    assert abs(peak_hz(pcm24, 24000) - 440) < 5
    assert all(abs(len(f.pcm24k) - 3840) <= 64 for f in sink.frames[3:])


@pytest.mark.timeout(30)
async def test_mute_gate_delivers_no_frames(alsa_rig) -> None:
    mic = alsa_rig.start_mic("test_mic")
    cap, sink = start_capture(AudioConfig(input="test_mic"))
    try:
        await sink.until(lambda: len(sink.frames) >= 3, 5)
        cap.muted = True
        delivered = cap.frames_delivered
        n = len(sink.frames)
        mic.play(tone(440, 1.0))
        await asyncio.sleep(1.2)
        assert cap.frames_delivered == delivered and len(sink.frames) == n
        cap.muted = False
        await sink.until(lambda: len(sink.frames) >= n + 5, 3)
    finally:
        cap.stop()
    assert cap.frames_delivered == len(sink.frames)
    # Nothing of the tone played while muted reached the consumer.
    assert not sink.loud(n)


@pytest.mark.timeout(40)
async def test_recovers_when_the_device_vanishes_and_returns(alsa_rig) -> None:
    mic = alsa_rig.start_mic("test_mic")
    cap, sink = start_capture(AudioConfig(input="test_mic"))
    try:
        await sink.until(lambda: len(sink.frames) >= 3, 5)
        mic.vanish(1.5)
        await sink.until(lambda: any("reopening" in s for s in sink.status), 5)
        n = len(sink.frames)
        assert mic.wait_event("open", 10, after=1) is not None
        mic.play(tone(660, 1.0))
        await sink.until(lambda: len(sink.loud(n)) >= 8, 10)
    finally:
        cap.stop()
    assert cap.reopens >= 1
    assert any("is back" in s for s in sink.status)
    assert abs(peak_hz(b"".join(f.pcm16k for f in sink.loud(n)[1:-1]), 16000) - 660) < 5
    # While the FIFO was gone the stale repeats were not passed on as a burst of audio.
    assert len(sink.frames) < n + 40


@pytest.mark.timeout(15)
async def test_missing_device_is_retried_and_stop_is_prompt(alsa_rig) -> None:
    cap, sink = start_capture(AudioConfig(input="no_such_pcm"))
    await sink.until(lambda: len(sink.status) >= 1, 5)
    t0 = time.monotonic()
    cap.stop()
    assert time.monotonic() - t0 < 1.0
    assert "no_such_pcm" in sink.status[0] and "retrying" in sink.status[0]
    assert not sink.frames


@pytest.mark.timeout(30)
async def test_analysis_runs_off_the_loop_and_rides_on_the_frame(alsa_rig) -> None:
    """The wake word's inference runs in the capture's analysis thread; the loop only gets the result."""
    import dataclasses
    import threading

    mic = alsa_rig.start_mic("test_mic")
    sink = Sink()
    cap = Capture(AudioConfig(input="test_mic"), sink.frame, asyncio.get_running_loop(), on_status=sink.status.append)
    threads: set[int] = set()

    def analyze(frame: AudioFrame) -> AudioFrame:
        threads.add(threading.get_ident())
        loud = np.abs(np.frombuffer(frame.pcm16k, np.int16)).max() > 3000
        return dataclasses.replace(frame, wake="loud") if loud else frame

    class FrontEnd:
        threads: set[int] = set()

        def process(self, frame: AudioFrame) -> AudioFrame:
            self.threads.add(threading.get_ident())
            return frame

        def reset(self) -> None:
            pass

    cap.analyze = analyze
    cap.frontend = fe = FrontEnd()
    cap.start()
    try:
        # Quiet frames first: were the tone already queued when the card opens, every frame could be loud.
        await sink.until(lambda: len(sink.frames) >= 3, 5)
        mic.play(tone(440, 0.6))
        await sink.until(lambda: len(sink.loud()) >= 4, 5)
    finally:
        cap.stop()
    assert threads and threading.get_ident() not in threads
    # ... nor in the reader's, which runs the front-end: on a board with two cores or more the two run at once.
    assert fe.threads and not fe.threads & threads and threading.get_ident() not in fe.threads
    assert all(f.wake == "loud" for f in sink.loud()) and any(f.wake is None for f in sink.frames)


@pytest.mark.timeout(40)
async def test_a_wake_word_that_cannot_keep_up_does_not_hold_the_audio_back(alsa_rig, caplog) -> None:
    """An analysis slower than real time (a board too slow for its wake model): the frames are
    passed on without it once 4 s are waiting, so the session hears the person at most that late,
    and in order, instead of later and later."""
    import logging

    alsa_rig.start_mic("test_mic")
    sink = Sink()
    late: list[float] = []  # how long after the card recorded it each frame reached the loop, s
    cap = Capture(AudioConfig(input="test_mic"), lambda f: (late.append(time.monotonic() - f.t), sink.frame(f)),
                  asyncio.get_running_loop(), on_status=sink.status.append)
    cap.analyze = lambda f: (time.sleep(0.2), f)[1]  # 200 ms for each 80 ms frame
    with caplog.at_level(logging.WARNING, logger="device.audio.capture"):
        cap.start()
        try:
            await sink.until(lambda: len(sink.frames) >= 1, 5)
            await asyncio.sleep(12.0)  # analysed all along, the last frames would come 7.2 s late
        finally:
            cap.stop()
    assert cap.analysis_skipped > 0
    assert any("the wake word is" in r.getMessage() and "frames behind" in r.getMessage() for r in caplog.records)
    assert max(late) < 4.6, f"frames reached the loop up to {max(late):.1f} s late"
    assert len(sink.frames) >= 8.0 / 0.08  # of 12 s (the last 4 s may still be waiting)
    assert [f.seq for f in sink.frames] == list(range(sink.frames[0].seq, sink.frames[0].seq + len(sink.frames)))


@pytest.mark.timeout(30)
async def test_a_reader_held_up_keeps_its_frames_on_the_card_clock(alsa_rig) -> None:
    """A reader thread held up (a busy CPU, the event loop holding the interpreter) reads its
    backlog at once; its frames are still timed by when the card recorded them, one every 80 ms,
    which is what lines each one up with the speaker's echo and with an unmute."""
    mic = alsa_rig.start_mic("test_mic")
    sink = Sink()
    cap = Capture(AudioConfig(input="test_mic"), sink.frame, asyncio.get_running_loop(), on_status=sink.status.append)
    held: list[int] = []

    def analyze(frame: AudioFrame) -> AudioFrame:
        if frame.seq in (12, 24):
            held.append(frame.seq)
            time.sleep(0.11)  # the next read returns 110 ms late, and the one after at once
        return frame

    cap.analyze = analyze
    cap.start()
    try:
        mic.play(tone(440, 0.2))
        await sink.until(lambda: len(sink.frames) >= 36, 8)
    finally:
        cap.stop()
    assert held == [12, 24]
    frames = [f for f in sink.frames if 6 <= f.seq <= 34]
    assert [f.seq for f in frames] == list(range(6, 35)), "a frame was lost"
    gaps = np.diff([f.t for f in frames]) * 1000
    assert np.all(np.abs(gaps - 80) < 5), f"frames placed off the card's 80 ms pace: {np.round(gaps)}"


@pytest.mark.timeout(30)
async def test_what_was_said_while_muted_stays_out_when_the_reader_is_held_up_past_the_unmute(alsa_rig, monkeypatch) -> None:
    """A word said while muted, whose read is held up until after the unmute (a busy CPU), is
    still audio recorded while muted: it never leaves the capture layer."""
    import threading

    from device.audio import capture as capture_mod

    mic = alsa_rig.start_mic("test_mic")
    hold, held, release = threading.Event(), threading.Event(), threading.Event()

    class HeldPcm:
        """The capture PCM, whose reader can be held up after reading a word."""

        def __init__(self, pcm) -> None:
            self._pcm = pcm

        def read(self):
            n, data = self._pcm.read()
            if hold.is_set() and n > 0 and np.abs(np.frombuffer(data, np.int16)).max() > 3000:
                hold.clear()
                held.set()
                release.wait(5)
            return n, data

        def __getattr__(self, name):
            return getattr(self._pcm, name)

    real_open = capture_mod.open_pcm
    monkeypatch.setattr(capture_mod, "open_pcm", lambda *a, **k: (lambda pf: (HeldPcm(pf[0]), pf[1]))(real_open(*a, **k)))
    cap, sink = start_capture(AudioConfig(input="test_mic"))
    try:
        await sink.until(lambda: len(sink.frames) >= 10, 5)
        cap.muted = True
        hold.set()
        mic.play(tone(440, 0.08))  # said while muted (one chunk of the rig, whose clock stops while a read waits)
        assert await asyncio.to_thread(held.wait, 3)
        n = len(sink.frames)
        cap.muted = False  # unmuted while the word waits in the held-up reader
        await asyncio.sleep(0.2)
        release.set()
        await asyncio.sleep(0.6)
        mic.play(tone(660, 0.4))  # said after the unmute: heard
        await sink.until(lambda: len(sink.loud(n)) >= 3, 6)
    finally:
        release.set()
        cap.stop()
    heard = [round(peak_hz(f.pcm16k, 16000)) for f in sink.loud(n)]
    assert all(abs(hz - 660) < 20 for hz in heard), f"audio from while muted left the capture layer: {heard} Hz"


def test_the_read_clock_follows_the_card_not_the_reads() -> None:
    """Reads that return late (up to 250 ms) move no frame; a card 300 ppm off the system clock,
    fast or slow, is followed within a millisecond."""
    rng = np.random.default_rng(5)
    for ppm in (-300.0, 0.0, 300.0):
        clock, t0, errors = ReadClock(), 100.0, []
        for i in range(1, 1500):  # two minutes of 80 ms reads
            ended = t0 + i * 0.08 / (1 + ppm * 1e-6)  # when the card finished recording read i
            late = 0.25 - (i % 200 - 196) * 0.08 if 196 <= i % 200 <= 199 else 0.0  # a held-up reader, its backlog
            now = ended + max(late, 0.0) + rng.exponential(0.002)  # the wake-up's own jitter
            errors.append(clock.stamp(now, 0.08) - ended)
        errors_ms = np.array(errors[50:]) * 1000
        assert errors_ms.min() > -1.0 and errors_ms.max() < 1.0, (ppm, errors_ms.min(), errors_ms.max())


def test_preroll_keeps_recent_frames() -> None:
    pre = PreRoll(0.4)
    for i in range(20):
        pre.append(AudioFrame(i, b"", b"", t=100.0 + i * 0.08))
    assert len(pre) == 5
    assert [f.seq for f in pre.since(100.0 + 17 * 0.08)] == [17, 18, 19]
    assert [f.seq for f in pre.since(0)] == [15, 16, 17, 18, 19]
    pre.clear()
    assert pre.since(0) == []
