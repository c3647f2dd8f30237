"""Speaker output: a writer thread feeding pyalsaaudio, with played-position tracking.

The writer thread is the only user of the playback PCM. It writes one period at a time, so
:meth:`Playback.stop` takes effect within a period: the queue is discarded and the device buffer
dropped. "Played" is frames written minus frames still in the device
(``buffer_size - avail()``), sampled by the writer after every period and while draining, and
extrapolated at the device rate in between.

With echo cancellation on (a :class:`~device.audio.reference.PlaybackReference` attached), the
speaker runs without a break: the writer fills every period that no reply fills with silence,
which the reference taps like any audio. A device that starts, runs dry or is dropped begins its
next stream at a delay that differs by up to a period or two (a driver that reports no delay
says nothing of it), and the echo canceller, which locks onto one delay, then leaks the echo of
the next reply's first seconds until it finds the new one. A stream that never stops keeps one
delay. :meth:`Playback.stop` then discards the queued reply but lets the device's short buffer
play out (at most ``CONTINUOUS_BUFFER_MS``) instead of dropping it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import alsaaudio
import numpy as np
import soxr

from device.audio.alsa_util import PcmFormat, open_pcm, probe_output
from device.audio.cues import cue_ms, cue_pcm
from device.audio.frames import SESSION_RATE
from device.config import AudioConfig

if TYPE_CHECKING:
    from device.audio.reference import PlaybackReference

_LOG = logging.getLogger(__name__)

IN_RATE = SESSION_RATE
PERIOD_MS = 20
# A reply that starts on an idle speaker waits for this much audio (or this long) before the first
# write, so deltas arriving at exactly real time with network jitter do not underrun the device.
PREBUFFER_MS = 100
# The device buffer while the speaker runs without a break: what still plays after stop().
CONTINUOUS_BUFFER_MS = 100
FILL_LOW_MS = 30  # silence is added when less than this is queued, up to the buffer
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 8.0
_KEEP_ITEMS = 32

__all__ = ["Playback", "probe_output", "volume_gain"]


def volume_gain(volume: int) -> float:
    """Software gain for a 0-100 volume (squared: even steps sound even)."""
    v = max(0, min(100, volume)) / 100.0
    return v * v


@dataclass(slots=True)
class _Item:
    received: int = 0  # input samples at 24 kHz
    first: int = -1  # device frame index of its first written frame
    last: int = -1  # device frame index after its last written frame
    gaps: list[list[int]] = field(default_factory=list)  # [frame index, frames] of silence between its pieces


class Playback:
    """Plays 24 kHz S16LE mono on the configured PCM (converted to what the device takes)."""

    def __init__(self, cfg: AudioConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self._loop = loop
        self._volume = cfg.volume
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[str, bytes, float]] = collections.deque()
        self._queue_since = 0.0  # when the queue last went from empty to non-empty
        self._stop_gen = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._items: dict[str, _Item] = {}
        self._current = ""
        self.format: PcmFormat | None = None
        # Device position, written by the writer thread only.
        self._written = 0  # frames handed to the device (minus frames dropped from it)
        self._delay = 0  # frames still in the device at _delay_t
        self._delay_t = 0.0
        self._rate = 0
        # Idle tracking: _enqueued counts writes (loop); the writer reports the count it drained.
        self._enqueued = 0
        self._drained_upto = 0
        self._drained_event = asyncio.Event()
        self._drained_event.set()
        self.underruns = 0
        self.on_problem: Callable[[str], None] | None = None
        """Called on the loop when the speaker fails (once per outage), e.g. to show it on MQTT."""
        self._failing = False
        self._ok_frames = 0  # frames written since the device was last (re)opened
        self._backoff = BACKOFF_MIN_S  # before reopening a failed device; doubles up to BACKOFF_MAX_S
        # Echo cancellation's far end: every period written is tapped here (set before start()).
        # With it, the speaker runs without a break (see the module docstring).
        self.reference: PlaybackReference | None = None
        self._real_end = 0  # device frame index after the last frame of real audio (not filler)
        self._last_item = ""  # the item that audio came from last
        self._reports = False  # the device reports what it still holds (a FIFO or a file does not)
        self._clock_t0 = 0.0  # when the device's stream started, by the clock ...
        self._clock_frames = 0  # ... and the frames written to it since
        self.filler_s = 0.0  # silence written to keep the speaker running (for tests and benchmarks)

    # -- public API (event loop) --------------------------------------------------------------

    @property
    def volume(self) -> int:
        """0-100, applied in software as audio is written."""
        return self._volume

    @volume.setter
    def volume(self, value: int) -> None:
        self._volume = max(0, min(100, int(value)))

    @property
    def continuous(self) -> bool:
        """The speaker runs without a break (echo cancellation is on)."""
        return self.reference is not None

    @property
    def busy(self) -> bool:
        """Audio queued or still playing."""
        return self._drained_upto < self._enqueued

    def start(self) -> None:
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="playback", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Stop playing and release the device."""
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._stop_gen += 1
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)
        self._drained_upto = self._enqueued
        self._drained_event.set()

    def begin(self, item_id: str) -> None:
        """A new reply item starts: later :meth:`write` calls belong to it."""
        self._current = item_id
        with self._cond:
            self._new_item(item_id)

    def write(self, pcm24k: bytes) -> None:
        """Queue S16LE 24 kHz mono audio of the current item (non-blocking)."""
        self._enqueue(self._current, pcm24k, volume_gain(self._volume))

    def stop(self) -> None:
        """Silence now: discard the queue and drop what the device still holds (with echo
        cancellation on, the device's short buffer plays out instead: see the module docstring)."""
        with self._cond:
            self._queue.clear()
            self._stop_gen += 1
            self._cond.notify()

    def played_ms(self, item_id: str) -> int:
        """Audio of ``item_id`` really played so far (never more than received)."""
        with self._cond:
            item = self._items.get(item_id)
            if item is None or item.first < 0 or not self._rate:
                return 0
            pos = min(max(self._position(), item.first), item.last)
            frames = pos - item.first - sum(max(0, min(n, pos - at)) for at, n in item.gaps)
            played = frames * 1000 // self._rate
            return int(min(played, item.received * 1000 // IN_RATE))

    def received_ms(self, item_id: str) -> int:
        """Audio of ``item_id`` received through :meth:`write`."""
        item = self._items.get(item_id)
        return 0 if item is None else item.received * 1000 // IN_RATE

    async def drained(self) -> None:
        """Return when everything written so far has been played."""
        target = self._enqueued
        while self._drained_upto < target:
            self._drained_event.clear()
            if self._drained_upto >= target:
                break
            await self._drained_event.wait()

    async def play_cue(self, name: str) -> None:
        """Play a sound cue (one of cues.CUES) and wait for it."""
        pcm = cue_pcm(name)  # unknown names raise ValueError even with cues off
        if not self.cfg.cues and name != "alarm":  # a timer's alarm is not a courtesy cue
            return
        gain = volume_gain(self._volume) * self.cfg.cue_volume / 100.0
        key = f"cue:{name}:{self._enqueued}"
        with self._cond:
            self._new_item(key)
        self._enqueue(key, pcm, gain)
        try:
            await asyncio.wait_for(self.drained(), cue_ms(name) / 1000 + 2.0)
        except TimeoutError:
            _LOG.warning("sound cue %s did not finish playing on '%s'", name, self.cfg.output)

    # -- internals ------------------------------------------------------------------------

    def _enqueue(self, item_id: str, pcm: bytes, gain: float) -> None:
        if not pcm:
            return
        with self._cond:
            item = self._items.get(item_id) or self._new_item(item_id)
            item.received += len(pcm) // 2
            if not self._queue:
                self._queue_since = time.monotonic()
            self._queue.append((item_id, pcm, gain))
            self._enqueued += 1
            self._cond.notify()

    def _new_item(self, item_id: str) -> _Item:
        """(Re)start the counters of ``item_id``, forgetting the oldest items (caller holds the lock)."""
        self._items.pop(item_id, None)
        item = self._items[item_id] = _Item()
        while len(self._items) > _KEEP_ITEMS:
            self._items.pop(next(iter(self._items)))
        return item

    def _position(self) -> int:
        """Frames played so far (caller holds the lock)."""
        if self._delay <= 0:
            return self._written
        elapsed = int((time.monotonic() - self._delay_t) * self._rate)
        return self._written - max(0, self._delay - elapsed)

    def _report_drained(self, upto: int) -> None:
        if upto > self._drained_upto:
            self._drained_upto = upto
        self._drained_event.set()

    def _signal_drained(self, upto: int) -> None:
        try:
            self._loop.call_soon_threadsafe(self._report_drained, upto)
        except RuntimeError:
            pass

    # -- writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closing:
                    return
            try:
                buffer_ms = min(self.cfg.output_buffer_ms, CONTINUOUS_BUFFER_MS) if self.continuous else self.cfg.output_buffer_ms
                pcm, fmt = open_pcm(self.cfg.output, capture=False, rate=self.cfg.output_rate or IN_RATE,
                                    channels=self.cfg.output_channels or 1, period_ms=PERIOD_MS,
                                    periods=max(2, buffer_ms // PERIOD_MS))
            except OSError as exc:
                self._problem(f"{exc}; retrying in {self._backoff:.1f} s (audio meanwhile is discarded)")
                if self._discard_for(self._backoff):
                    return
                self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
                continue
            self.format = fmt
            self._ok_frames = 0
            if not self._failing:
                _LOG.info("playing on '%s': %s", self.cfg.output, fmt.describe())
            try:
                self._write_loop(pcm, fmt)
                try:
                    pcm.drop()
                except alsaaudio.ALSAAudioError:
                    pass
                return
            except alsaaudio.ALSAAudioError as exc:
                self._problem(f"speaker '{self.cfg.output}' failed ({exc}); reopening")
            finally:
                try:
                    pcm.close()
                except alsaaudio.ALSAAudioError:
                    pass
            # Failed while writing (a device that went away under an open handle, a broken
            # driver, one that opens but cannot play): wait before reopening instead of spinning.
            if self._discard_for(self._backoff):
                return
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def _problem(self, text: str) -> None:
        # Once per outage at warning (and to on_problem); the retries that follow at debug.
        if self._failing:
            _LOG.debug("%s", text)
            return
        self._failing = True
        _LOG.warning("%s", text)
        if self.on_problem is not None:
            try:
                self._loop.call_soon_threadsafe(self.on_problem, text)
            except RuntimeError:  # the loop is closed: shutting down
                pass

    def _discard_for(self, seconds: float) -> bool:
        """No device: drop queued audio (so nobody waits for it) for ``seconds``; True if closing."""
        deadline = time.monotonic() + seconds
        while True:
            with self._cond:
                if self._closing:
                    return True
                self._queue.clear()
                upto = self._enqueued
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._signal_drained(upto)
                self._cond.wait(left)
        return False

    def _write_loop(self, pcm: alsaaudio.PCM, fmt: PcmFormat) -> None:
        rate = fmt.rate
        resampler = None if rate == IN_RATE else soxr.ResampleStream(IN_RATE, rate, 1, dtype="float32", quality="HQ")
        with self._cond:
            if rate != self._rate:  # positions are counted in device frames: keep them across a reopen
                self._rate = rate
                self._written = 0
            self._delay = 0
            seen_gen = self._stop_gen
        tail_item: str | None = None  # item whose last samples soxr still holds back
        while True:
            entry = None
            action = "write"
            with self._cond:
                while not self._queue and not self._closing and self._stop_gen == seen_gen:
                    if self.continuous:  # nothing to play: keep the speaker running on silence
                        if self._drained_upto < self._enqueued and self._position() >= self._real_end:
                            self._signal_drained(self._enqueued)
                        spare = self._spare()
                        if spare > 0:  # enough queued: wait (a reply that comes wakes us at once)
                            self._cond.wait(spare / rate)
                            continue
                        action = "fill"
                        break
                    if tail_item is not None and self._delay <= 2 * fmt.period:
                        action = "flush"
                        break
                    if self._delay > 0:  # still playing: follow its position, then look again
                        self._cond.wait(PERIOD_MS / 1000)
                        action = "poll"
                        break
                    upto = self._enqueued
                    if self._drained_upto < upto:
                        self._signal_drained(upto)
                    self._cond.wait()
                if self._closing:
                    return
                if self._stop_gen != seen_gen:
                    seen_gen = self._stop_gen
                    action = "stop"
                elif action == "write":
                    wait_s = self._prebuffer_wait(tail_item)
                    if wait_s > 0 and self.continuous:
                        action = "fill"  # held back: the speaker plays silence meanwhile
                        spare = self._spare()
                        if spare > 0:
                            self._cond.wait(min(wait_s, spare / rate))
                            continue
                    elif wait_s > 0:
                        self._cond.wait(wait_s)
                        continue
                    elif self._queue:
                        entry = self._queue.popleft()
                    else:
                        action = "poll"
            if action == "stop" and self.continuous:
                # stop(): the loop side discarded the queue; what the device holds plays out, and
                # silence follows on the same stream.
                tail_item = None
                continue
            if action == "fill":
                # Up to the device's buffer, whole periods: a few writes a second, none blocking long.
                with self._cond:
                    periods = max(1, (fmt.buffer - self._queued()) // fmt.period)
                x = np.zeros(periods * fmt.period * IN_RATE // rate, dtype=np.float32)
                if resampler is not None:
                    x = resampler.resample_chunk(x)
                self._write_all(pcm, fmt, None, self._to_device(x, fmt), seen_gen)
                continue
            if action == "stop":
                # stop(): drop the device buffer; the loop side already discarded the queue.
                self._drop(pcm, fmt)
                if resampler is not None:
                    resampler = soxr.ResampleStream(IN_RATE, rate, 1, dtype="float32", quality="HQ")
                tail_item = None
                continue
            if action == "poll":
                self._refresh(pcm, fmt)
                continue
            if action == "flush":
                # Nothing more queued and the device is nearly empty: push out what soxr holds
                # back and start a fresh stream (the audio ends here anyway).
                assert resampler is not None
                y = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                resampler = soxr.ResampleStream(IN_RATE, rate, 1, dtype="float32", quality="HQ")
                self._write_all(pcm, fmt, tail_item, self._to_device(y, fmt), seen_gen)
                tail_item = None
                continue
            assert entry is not None
            item_id, data, gain = entry
            x = np.frombuffer(data, dtype=np.int16).astype(np.float32)
            if gain != 1.0:
                x *= gain
            if resampler is not None:
                x = resampler.resample_chunk(x)
                tail_item = item_id
            self._write_all(pcm, fmt, item_id, self._to_device(x, fmt), seen_gen)

    def _prebuffer_wait(self, tail_item: str | None) -> float:
        """Seconds to hold back the start of a reply on an idle device (caller holds the lock)."""
        if not self._queue or self._queue[0][0].startswith("cue:"):
            return 0.0
        if self.continuous:
            item = self._items.get(self._queue[0][0])
            if item is not None and item.first >= 0:  # the reply already plays: no holding back
                return 0.0
        elif self._delay > 0 or tail_item is not None:
            return 0.0
        if sum(len(e[1]) for e in self._queue) >= PREBUFFER_MS * IN_RATE * 2 // 1000:
            return 0.0
        return self._queue_since + PREBUFFER_MS / 1000 - time.monotonic()

    @staticmethod
    def _to_device(x: np.ndarray, fmt: PcmFormat) -> bytes:
        y = np.clip(np.rint(x), -32768, 32767)
        y = (y.astype(np.int32) << 16) if fmt.format == alsaaudio.PCM_FORMAT_S32_LE else y.astype(np.int16)
        if fmt.channels > 1:
            y = np.repeat(y, fmt.channels)
        return y.tobytes()

    def _refresh(self, pcm: alsaaudio.PCM, fmt: PcmFormat) -> tuple[int, float]:
        """Read the device's queue: (frames queued, when), the time taken as the figure is read
        (a wait for the lock, or for the interpreter on a busy CPU, would place it late)."""
        avail = pcm.avail()
        t = time.monotonic()
        delay = fmt.buffer - avail if 0 <= avail <= fmt.buffer else 0
        with self._cond:
            self._delay = delay
            self._delay_t = t
            self._reports = self._reports or delay > 0
        return delay, t

    def _queued(self) -> int:
        """Frames still in the device: its own figure if it gives one, else what the clock says is
        left of what was written since its stream began (caller holds the lock)."""
        return self._written - self._position() if self._reports else max(0, self._ahead())

    def _spare(self) -> int:
        """Frames queued beyond the level at which silence is added (caller holds the lock)."""
        return self._queued() - FILL_LOW_MS * self._rate // 1000

    def _write_all(self, pcm: alsaaudio.PCM, fmt: PcmFormat, item_id: str | None, data: bytes, gen: int) -> None:
        """Write ``data`` a period at a time, stopping early if stop() is called (``item_id``
        None: silence that keeps the speaker running)."""
        step = fmt.period * fmt.frame_bytes if item_id is not None else max(1, len(data))  # silence: in one write
        view = memoryview(data)
        for off in range(0, len(data), step):
            if self._stop_gen != gen or self._closing:
                return
            piece = view[off : off + step]
            for _ in range(3):
                res = pcm.write(piece)
                if res != -32:  # -EPIPE: underrun; pyalsaaudio re-prepared the stream, write again
                    break
                self.underruns += 1
                if self.reference is not None:
                    self.reference.restarted()
                if self.underruns in (1, 10, 100) or self.underruns % 1000 == 0:
                    _LOG.info("speaker '%s': underrun (%d so far)", self.cfg.output, self.underruns)
            if self._failing and res > 0:
                # Back only after a second of audio went out: some devices (and ALSA's file
                # plugin) take a write into a buffer and fail on the next one.
                self._ok_frames += res
                if self._ok_frames >= fmt.rate:
                    self._failing = False
                    self._backoff = BACKOFF_MIN_S
                    _LOG.info("playing on '%s' again: %s", self.cfg.output, fmt.describe())
            self._account(item_id, len(piece) // fmt.frame_bytes)
            delay, t = self._refresh(pcm, fmt)
            if self.reference is not None:
                self._tap(piece, fmt, delay, t)

    def _tap(self, piece: memoryview, fmt: PcmFormat, delay: int, t: float) -> None:
        """Hand the period just written, and where it sits in the device queue (``delay`` frames
        after it was written, at ``t``), to the reference."""
        assert self.reference is not None
        if fmt.format == alsaaudio.PCM_FORMAT_S32_LE:
            x = (np.frombuffer(piece, dtype=np.int32) >> 16).astype(np.float32)
        else:
            x = np.frombuffer(piece, dtype=np.int16).astype(np.float32)
        if fmt.channels > 1:
            x = x[:: fmt.channels]
        self.reference.written(x, fmt.rate, max(0, delay - len(x)), t)

    def _ahead(self) -> int:
        """Frames written beyond what the clock says the device played since its stream began
        (caller holds the lock)."""
        return self._clock_frames - int((time.monotonic() - self._clock_t0) * self._rate)

    def _account(self, item_id: str | None, frames: int) -> None:
        with self._cond:
            if self._ahead() <= 0:  # the device ran dry (or just started): a new stream
                self._clock_t0, self._clock_frames = time.monotonic(), 0
            self._clock_frames += frames
            if item_id is None:
                self.filler_s += frames / self._rate
                # Silence after an item's audio: if more of it comes, this pause is not its audio.
                item = self._items.get(self._last_item)
                if item is not None and item.first >= 0:
                    if item.gaps and item.gaps[-1][0] + item.gaps[-1][1] == self._written:
                        item.gaps[-1][1] += frames
                    else:
                        item.gaps.append([self._written, frames])
            else:
                self._last_item = item_id
                item = self._items.get(item_id)
                if item is not None:
                    if item.first < 0:
                        item.first = self._written
                    item.last = self._written + frames
                self._real_end = self._written + frames
            self._written += frames

    def _drop(self, pcm: alsaaudio.PCM, fmt: PcmFormat) -> None:
        avail = pcm.avail()
        delay = fmt.buffer - avail if 0 <= avail <= fmt.buffer else 0
        try:
            pcm.drop()
        except alsaaudio.ALSAAudioError as exc:
            _LOG.warning("speaker '%s': drop failed (%s)", self.cfg.output, exc)
        with self._cond:
            # What was still in the device is never played: take it off the written count and
            # off the items it belonged to.
            self._written -= delay
            for item in self._items.values():
                if item.last > self._written:
                    item.last = max(item.first, self._written)
            self._delay = 0
            self._delay_t = time.monotonic()
        if self.reference is not None:
            self.reference.dropped()
