"""Microphone capture: pyalsaaudio in a reader thread, 80 ms frames at 16 kHz and 24 kHz.

The reader thread is the only user of the capture PCM; it runs the front-end (echo cancellation)
on each frame, and hands it to the analysis thread, which runs the wake word's inference on it
beside the next frame's front-end (on another core) and passes it on, in order. Frames reach the
event loop through ``loop.call_soon_threadsafe``; while muted they are dropped in the reader
thread and never delivered. Read errors, overruns and a vanished device are logged and recovered
by reopening with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import alsaaudio

from device.audio.alsa_util import PcmFormat, open_pcm, probe_input
from device.audio.frames import FRAME_MS, AudioFrame
from device.audio.load import ProcessingLoad
from device.audio.resample import FrameAssembler
from device.config import AudioConfig

_LOG = logging.getLogger(__name__)

PERIOD_MS = FRAME_MS  # one read per frame: fewest wake-ups, and the rig's FIFO is fed in 80 ms chunks
# The card's buffer (2 s) is what a reader held up may fall behind without losing audio: the frames'
# processing runs in this thread, and now and then takes far longer than a frame (AEC3 trained on the
# echo path the linear stage learnt: 3 s of audio at once, 0.12-0.15 s on the test rig's VM, so 1-1.5 s
# on a CPU ten times slower, a Raspberry Pi 3's). ReadClock's window is as long. A read still returns as
# soon as one period is in, so the buffer adds no latency.
PERIODS = 25
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 8.0
# Frames waiting for the analysis thread beyond this (4 s: it cannot keep up; a reader held up for
# as long as the card's buffer hands over 2 s at once) are passed on without it until the backlog
# is down to a quarter of it, so the session's audio keeps flowing.
BACKLOG_FRAMES = 50

__all__ = ["AudioFrame", "Capture", "probe_input"]


class Frontend(Protocol):
    """Cleans microphone frames in the reader thread (see device.audio.echo)."""

    def process(self, frame: AudioFrame) -> AudioFrame: ...

    def reset(self) -> None: ...


class _DeviceGone(Exception):
    pass


class ReadClock:
    """When the audio read so far ended, on the card's steady clock rather than the read's return.

    A read returns late when the reader thread was held up (the event loop, a garbage collection,
    a busy CPU), and the backlog then comes in at once; timed by when each read returned, those
    frames would be placed late, and the echo reference read for them would be off by as much.
    The card's clock is steady: the audio counted so far ended at the least late of the recent
    reads' (return time - audio count), plus the count now. Over ``window_s`` the estimate
    follows a card whose clock runs slow of the system's; a lost stretch of audio is an overrun,
    after which the clock starts again (:meth:`reset`).
    """

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.reset()

    def reset(self) -> None:
        """Start again (after an overrun or a reopen: the count no longer lines up)."""
        self.audio_s = 0.0
        self._offsets: deque[tuple[float, float]] = deque()  # (audio count, return - count), increasing offsets

    def stamp(self, now: float, seconds: float) -> float:
        """A read of ``seconds`` of audio returned at ``now``: when that audio ended."""
        self.audio_s += seconds
        offset = now - self.audio_s
        q = self._offsets
        while q and q[-1][1] >= offset:
            q.pop()
        q.append((self.audio_s, offset))
        while q[0][0] < self.audio_s - self.window_s:
            q.popleft()
        return q[0][1] + self.audio_s


class Capture:
    """Reads the configured microphone PCM in a thread and hands frames to ``on_frame`` on the loop."""

    def __init__(self, cfg: AudioConfig, on_frame: Callable[[AudioFrame], None], loop: asyncio.AbstractEventLoop,
                 on_status: Callable[[str], None] | None = None,
                 on_recovered: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self._on_recovered = on_recovered
        self._on_frame = on_frame
        self._loop = loop
        self._on_status = on_status
        self._muted = False
        self._unmuted_at = 0.0  # monotonic time of the last unmute
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_delivered = 0
        self.format: PcmFormat | None = None  # what the device was opened with (for logs/tests)
        self.reopens = 0
        self._seq = 0
        self._flowed_s = 0.0
        # Runs in the analysis thread on each frame before it goes to the loop (the wake word's
        # inference: it must not stall the loop); returns the frame, annotated.
        self.analyze: Callable[[AudioFrame], AudioFrame] | None = None
        self._analysis: threading.Thread | None = None
        self._frames: queue.SimpleQueue[tuple[AudioFrame, float] | None] = queue.SimpleQueue()
        self.analysis_skipped = 0  # frames passed on without analysis (a backlog)
        # Optional front-end (echo cancellation, noise suppression, gain): one process(frame) ->
        # frame call in this thread on every frame, before anyone sees it. Set before start().
        self.frontend: Frontend | None = None
        self.load: ProcessingLoad | None = None  # what processing the frames costs this CPU (set on start)
        # Called on the loop with each window's load: its share of real time, and each stage's (name, share).
        self.on_load: Callable[[float, tuple[tuple[str, float], ...]], None] | None = None

    @property
    def muted(self) -> bool:
        """True: frames are discarded in the reader thread and never delivered."""
        return self._muted

    @muted.setter
    def muted(self, value: bool) -> None:
        if self._muted and not value:
            self._unmuted_at = time.monotonic()
        self._muted = bool(value)

    def start(self) -> None:
        """Start the reader thread (it opens the PCM, and reopens it with backoff on failure) and
        the analysis thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        if self.load is None:  # (kept through a restart: a lasting overload is not said again after each)
            fe = self.frontend
            self.load = ProcessingLoad(self.cfg.input, (getattr(fe, "label", "front-end"), "wake word"),
                                       advice=getattr(fe, "advice", ""))
            self.load.on_measure = self._measured
        self._frames = queue.SimpleQueue()
        self._analysis = threading.Thread(target=self._analyse, args=(self._frames,), name="capture-analysis", daemon=True)
        self._analysis.start()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading; the threads are gone within 1 s (unless ALSA itself hangs)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(1.0)
            if thread.is_alive():
                _LOG.warning("capture thread for %s did not stop within 1 s (ALSA blocked)", self.cfg.input)
        analysis, self._analysis = self._analysis, None
        if analysis is not None:
            self._frames.put(None)
            analysis.join(1.0)

    # -- loop side ---------------------------------------------------------------------------

    def _deliver(self, frame: AudioFrame) -> None:
        # Muted between the read and now, or read partly before the unmute: never delivered.
        if self._muted or frame.t - PERIOD_MS / 1000 < self._unmuted_at:
            return
        self.frames_delivered += 1
        try:
            self._on_frame(frame)
        except Exception:
            _LOG.exception("audio frame consumer failed")

    def _status(self, text: str, level: int = logging.WARNING) -> None:
        report = self._on_recovered if level < logging.WARNING and self._on_recovered is not None else self._on_status
        if report is None:  # otherwise the owner reports it (no double log lines)
            _LOG.log(level, "%s", text)
        else:
            try:
                self._loop.call_soon_threadsafe(report, text)
            except RuntimeError:  # loop closed during shutdown
                pass

    # -- reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        name = self.cfg.input
        backoff = BACKOFF_MIN_S
        failed = False
        while not self._stop.is_set():
            try:
                pcm, fmt = open_pcm(name, capture=True, rate=self.cfg.input_rate or 16000,
                                    channels=self.cfg.input_channels or 1, period_ms=PERIOD_MS, periods=PERIODS)
            except OSError as exc:
                self._status(f"{exc}; retrying in {backoff:.1f} s")
                failed = True
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.format = fmt
            if failed:
                self._status(f"microphone '{name}' is back: {fmt.describe()}", logging.INFO)
            else:
                _LOG.info("capturing from '%s': %s", name, fmt.describe())
            if self.cfg.input_rate and fmt.rate != self.cfg.input_rate:
                _LOG.warning("microphone '%s' runs at %d Hz, not the configured %d Hz; converting", name, fmt.rate, self.cfg.input_rate)
            self._flowed_s = 0.0
            try:
                self._read_loop(pcm, fmt)
            except _DeviceGone as exc:
                self._status(f"microphone '{name}': {exc}; reopening in {self._next_backoff(backoff):.1f} s")
            except alsaaudio.ALSAAudioError as exc:
                self._status(f"microphone '{name}' failed ({exc}); reopening in {self._next_backoff(backoff):.1f} s")
            except RuntimeError:  # the loop is closed: nobody to deliver to
                self._stop.set()
            finally:
                try:
                    pcm.close()
                except alsaaudio.ALSAAudioError:
                    pass
            if self._stop.is_set():
                return
            failed = True
            self.reopens += 1
            backoff = self._next_backoff(backoff)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _next_backoff(self, backoff: float) -> float:
        # A device that delivered audio for a while before failing is retried quickly.
        return BACKOFF_MIN_S if self._flowed_s > 5.0 else backoff

    def _read_loop(self, pcm: alsaaudio.PCM, fmt: PcmFormat) -> None:
        """Read until stopped or the device fails."""
        asm = FrameAssembler(fmt.rate, fmt.channels, fmt.format, self.cfg.input_channel)
        rate = fmt.rate
        # A real card never delivers faster than real time (a reader held up reads its backlog at
        # once, but that audio was recorded before); a device that does (the rig's FIFO after its
        # writer left, a broken driver) is treated as gone, within a few periods of jitter.
        ahead_limit = 4 * fmt.period / rate + 0.25
        anchor = time.monotonic()
        audio_s = 0.0
        clock = ReadClock()
        was_muted = False
        overruns = 0
        empty = 0
        stop = self._stop
        read = pcm.read
        cpu = time.thread_time
        analyse = self._frames.put
        while not stop.is_set():
            n, data = read()
            now = time.monotonic()
            if n < 0:
                overruns += 1
                if overruns in (1, 10, 100) or overruns % 1000 == 0:
                    _LOG.warning("microphone '%s': overrun (%d so far): audio was lost", self.cfg.input, overruns)
                anchor, audio_s = now, 0.0
                clock.reset()
                continue
            if n == 0:  # a blocking read returning nothing, again and again, is a dead device
                empty += 1
                if empty > 50:
                    raise _DeviceGone("returns no audio")
                time.sleep(0.01)
                continue
            empty = 0
            audio_s += n / rate
            self._flowed_s += n / rate
            t_end = clock.stamp(now, n / rate)
            ahead = audio_s - (now - anchor)
            if ahead < 0:
                anchor = now - audio_s
            elif now - anchor > 60.0:
                anchor, audio_s = now - ahead, ahead  # re-baseline: a card's clock drift must not add up
            elif ahead > ahead_limit:
                raise _DeviceGone(f"delivers audio faster than real time ({ahead:.1f} s ahead), the device is gone")
            # A read that began before the last unmute holds audio recorded while muted (a read
            # that returned late holds audio older than its return: the card's clock says how old).
            if self._muted or t_end - n / rate < self._unmuted_at:
                was_muted = True
                continue
            frontend = self.frontend
            if was_muted:
                asm.reset()
                if frontend is not None:
                    frontend.reset()
                was_muted = False
            for pcm16, pcm24 in asm.feed(data):
                self._seq += 1
                frame = AudioFrame(self._seq, pcm16, pcm24, t_end)
                c0 = cpu()
                if frontend is not None:
                    frame = frontend.process(frame)
                analyse((frame, cpu() - c0))

    # -- analysis thread ---------------------------------------------------------------------

    def _measured(self, share: float, stages: tuple[tuple[str, float], ...]) -> None:
        if self.on_load is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(self.on_load, share, stages)

    def _analyse(self, frames: queue.SimpleQueue[tuple[AudioFrame, float] | None]) -> None:
        """Run ``analyze`` on each frame the reader hands over, in order, and pass it to the loop."""
        cpu = time.thread_time
        call = self._loop.call_soon_threadsafe
        deliver = self._deliver
        load = self.load
        frame_s = FRAME_MS / 1000
        behind = False
        while (item := frames.get()) is not None:
            frame, frontend_cpu = item
            c0 = cpu()
            analyze = self.analyze
            backlog = frames.qsize()
            behind = analyze is not None and backlog > (BACKLOG_FRAMES // 4 if behind else BACKLOG_FRAMES)
            if behind:
                self.analysis_skipped += 1
                if self.analysis_skipped in (1, 100) or self.analysis_skipped % 10000 == 0:
                    _LOG.warning("microphone '%s': the wake word is %d frames behind; frames are passed on without it "
                                 "(%d so far)", self.cfg.input, backlog, self.analysis_skipped)
            elif analyze is not None:
                # -- begin: analysis (wake word) --
                try:
                    frame = analyze(frame)
                except Exception:
                    _LOG.exception("audio analysis failed")
                # -- end: analysis --
            if load is not None:
                load.frame(frame_s, (frontend_cpu, cpu() - c0))
            try:
                call(deliver, frame)
            except RuntimeError:  # the loop is closed: nobody to deliver to
                self._stop.set()
                return
