"""The echo canceller's far end: what the speaker played, on the capture clock, at 16 kHz.

The playback writer taps every period it hands to the device (:meth:`PlaybackReference.written`),
with the frames the device still held before it: that period starts sounding
``delay / rate`` seconds after the write. The tap resamples it with soxr to 16 kHz and lays it
on a timeline of ``time.monotonic()``; the capture thread reads back the 80 ms that ended when a
microphone frame was read (:meth:`PlaybackReference.read`).

AEC3 leaks echo for up to a second whenever the far end's delay jumps, so neither side ever
jumps while audio plays. A device's delay figure is noisy, and off one way: many drivers move
their play position a period at a time (the queue then reads up to a period, 20 ms, longer than
it is), and a writer preempted as it reads the figure places it later still. So a stream is laid
where the earliest of its writes' figures puts it, re-laid whole on every write until the reader
reaches it (before it sounds), and contiguous from then on (a device plays a
stream at its clock's pace). The reader keeps a contiguous cursor while audio plays (capture
delivers contiguous audio, however late its thread reads it); only a gap in the audio (the
speaker went idle) or a lasting or far stray (lost audio) re-anchors a cursor. Until the first
sound is read, the reader follows the clock instead: a daemon that is starting reads its
microphone late and in bursts, and a sound server's delay figure settles in its first seconds; a
cursor anchored then would jump once the first reply plays, which both cancellers would hear.

A sound card's clock is not this one: it runs some ppm fast or slow, and both cursors, kept
contiguous, drift from ``time.monotonic()`` (40 ms within 7 to 33 minutes at 20-100 ppm). On a
device that reports its queue, that drift is followed on each side, not taken for a stray or a
device that ran dry, so on one card (the microphone and the speaker on one clock) the echo keeps
one delay however long the speaker runs. A microphone on another card than the speaker drifts
apart from it (the echo's delay in the reference moves 0.1 ms a second at 100 ppm, and both
cancellers trail it; past 40 ms the reader is brought back to the writes' pace, one jump). The
echo canceller measures that drift on the echo itself and hands it over
(:meth:`PlaybackReference.adjust_pace`): the reader then reads the writes at the speaker's pace,
between samples, so the echo keeps one delay again. The devices' delay figures are not trusted
for that ratio: on the test rig, a PulseAudio sink's drifted some 50 ppm from the pace of what
it played.

A device that reports no queue (a FIFO, a driver without a delay figure) may hold more than it
says, and may run dry between network pieces without telling: that audio then plays later than
its stream says. AEC3 copes better with a far end that keeps its place (it searches the delay)
than with one that jumps, so :meth:`PlaybackReference.read` never jumps; the linear canceller,
which cannot bear lost pieces, reads :attr:`PlaybackReference.played`, a second view that starts
a stream again wherever the capture side overtook the writes, and lays later streams by the
delay so learnt.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view

_LOG = logging.getLogger(__name__)

RATE = 16000
SECONDS = 4.0  # timeline kept (the capture thread reads within ~100 ms of real time)
SLACK_S = 0.04  # an idle reader this far from the clock re-anchors
GAP_S = 0.1  # a writer this far behind the clock starts a new stream (the device ran dry)
STRAY_S = 0.25  # a playing reader this far from the clock re-anchors at once
STRAY_FRAMES = 2  # ... or more than SLACK_S away for this many reads in a row
# A card's clock runs some ppm off this one, so a stream that keeps its pace, on either side,
# drifts from the clock (at 20-100 ppm, 40 ms within 7-33 minutes). That drift is followed
# (smoothed over this much audio), not taken for lost audio or a device that ran dry, up to a
# limit (the writes then start a new stream on the clock, and the reader follows them).
DRIFT_FOLLOW_S = 4.0
DRIFT_MAX_S = 1.0
# A microphone on another card than the speaker keeps another pace: the echo's delay in the
# reference drifts. The echo canceller measures that drift (:meth:`PlaybackReference.adjust_pace`),
# and the reader then reads the writes at the speaker's pace, between samples (a windowed-sinc
# interpolation), so the echo keeps one delay.
TAPS = 32  # the interpolator's length (samples) ...
PHASES = 512  # ... and how finely it places a sample between two
FRESH_MAX_S = 1.0  # a stream is re-laid on its earliest position at most this long
# A writer ahead of where the device says it is means the device holds audio it does not report
# (a driver with no delay figure, or a FIFO): what was written in one stream plays in one stream,
# so it stays contiguous unless it is further ahead than any device buffer.
AHEAD_MAX_S = 2.5
# A device that reports no queue and whose reader overtook the stream holds more than it says:
# its streams are laid this much later each time, up to a limit.
UNREPORTED_STEP_S = 0.04
UNREPORTED_MAX_S = 1.0
# The reference is laid this much early: a far end that leads the echo costs AEC3 nothing (it
# searches for the delay), one that lags cannot be cancelled.
LEAD_S = 0.02

__all__ = ["PlaybackReference"]


def _sinc_table() -> np.ndarray:
    """Kaiser-windowed sinc taps for each of PHASES + 1 fractional positions (rows), for the
    samples TAPS/2 - 1 before to TAPS/2 after (columns); row 0 passes a sample through as it is."""
    half = TAPS // 2
    u = np.arange(-(half - 1), half + 1)[None, :] - np.linspace(0.0, 1.0, PHASES + 1)[:, None]
    h = np.sinc(u) * np.i0(8.0 * np.sqrt(np.clip(1.0 - (u / half) ** 2, 0.0, None))) / np.i0(8.0)
    return (h / h.sum(axis=1, keepdims=True)).astype(np.float32)


_TABLE = _sinc_table()


class PlaybackReference:
    """A thread-safe timeline of played audio: the playback thread writes, the capture thread reads."""

    def __init__(self, *, follow_gaps: bool = False) -> None:
        self.follow_gaps = follow_gaps
        self.played: PlaybackReference | None = None if follow_gaps else PlaybackReference(follow_gaps=True)
        self._lock = threading.Lock()
        self._size = int(RATE * SECONDS)
        self._buf = np.zeros(self._size, dtype=np.float32)
        self._t0 = time.monotonic()
        self._w = -1  # next timeline index the writer fills (-1: nothing written yet)
        self._r = -1  # next index the reader returns
        self._rs: soxr.ResampleStream | None = None
        self._rs_rate = 0
        self._rs_in = 0  # device frames fed to the resampler ...
        self._rs_out = 0  # ... and samples it gave back
        self._origin = -1  # where the current stream is laid
        self._pending: list[np.ndarray] = []  # the current stream while it is re-laid
        self._fresh = False  # the reader has not reached the current stream yet
        self._restarted = False  # the device ran dry: the next write starts a new stream
        self._pos: list[int] = []  # the stream's writes' (reported start - offset in stream)
        self._first_unreported = False
        self._strays = 0  # reads in a row the playing reader was more than SLACK_S off its drift
        self._drift = 0.0  # how far the playing reader's cursor has drifted from the clock (samples, smoothed)
        self._wdrift = 0.0  # how far the writes of a stream have drifted from the clock (samples, smoothed)
        self._ratio = 0.0  # how much faster the speaker's clock runs than the microphone's (as measured)
        self._off = 0.0  # how far ahead of its cursor the reader reads the writes (samples, fractional)
        self._cum = 0  # samples in the current stream
        self._reports = False  # the device has reported audio queued in it
        self._first_sound = -1  # where the first audible sample was written (-1: none yet)
        self._cold = True  # the reader has not come near a sound yet: it follows the clock
        self._unreported = 0  # delay learnt on a device that does not report its queue (samples)
        self.written_s = 0.0  # audio tapped so far (for logs and tests)
        self.write_anchors = 0  # times the writer's cursor was re-laid on the clock (a new stream)
        self.read_snaps = 0  # times the reader's cursor jumped to the clock while audio played
        self.restarts = 0  # times the device ran dry (underruns)

    @property
    def unreported_s(self) -> float:
        """Delay learnt on a device that holds more audio than it reports (0 on one that reports)."""
        return self._unreported / RATE

    def _index(self, t: float) -> int:
        return int(round((t - self._t0) * RATE))

    # -- playback thread ----------------------------------------------------------------------

    def written(self, samples: np.ndarray, rate: int, queued_before: int, t: float | None = None) -> None:
        """``samples`` (mono float, device rate, after volume) were just written, with
        ``queued_before`` frames still in the device ahead of them."""
        t = time.monotonic() if t is None else t
        if rate != self._rs_rate or self._rs is None:
            self._rs = None if rate == RATE else soxr.ResampleStream(rate, RATE, 1, dtype="float32", quality="HQ")
            self._rs_rate = rate
            self._rs_in = self._rs_out = 0
        x = np.asarray(samples, dtype=np.float32)
        # The resampler holds some input back (a few ms, more after some writes than others): what
        # comes out now started sounding that much before this write's first frame.
        held_s = self._rs_in / rate - self._rs_out / RATE
        y = x if self._rs is None else self._rs.resample_chunk(x)
        self._rs_in += len(x)
        self._rs_out += len(y)
        self.written_s += len(x) / rate
        if not len(y):
            return
        self._lay(y, rate, queued_before, t - held_s)
        if self.played is not None:
            self.played._lay(y, rate, queued_before, t - held_s)

    def _lay(self, y: np.ndarray, rate: int, queued_before: int, t: float) -> None:
        with self._lock:
            self._reports = self._reports or queued_before > 0
            start = self._index(t + queued_before / rate - LEAD_S) + self._unreported
            if (self.follow_gaps and not self._reports and 0 <= self._w < self._r
                    and start <= self._w + GAP_S * RATE and not self._fresh):
                # The reader passed the end of what was written while the stream went on, on a
                # device that reports no queue: it ran dry or holds more than it says, and this
                # audio would never be read. Learn that much more delay, and start the stream
                # again after the reader.
                self._unreported = min(self._unreported + self._r - self._w + int(UNREPORTED_STEP_S * RATE),
                                       int(UNREPORTED_MAX_S * RATE))
                start = self._index(t + queued_before / rate - LEAD_S) + self._unreported
                self._w = -1
            late = start - self._w - self._wdrift  # how far behind the clock the writes are, beyond their drift
            if self._w < 0 or self._restarted or late > GAP_S * RATE or late < -AHEAD_MAX_S * RATE or abs(self._wdrift) > DRIFT_MAX_S * RATE:
                if self._w >= 0 and start > self._w:  # a gap (the speaker was idle): silence there
                    self._zero(self._w, start)
                self._w = self._origin = start
                self._restarted = False
                self._wdrift = 0.0
                self._pending, self._fresh = [], True
                self._pos, self._cum = [], 0
                self.write_anchors += 1
            if self._fresh and self._r > self._origin:
                self._fresh, self._pending = False, []
            if self._fresh and self._cum < FRESH_MAX_S * RATE:
                # Not heard yet: lay the whole stream where its writes' earliest figure says.
                if queued_before > 0 or not self._pos:
                    # A device with nothing queued may just not report its queue (a FIFO): that
                    # figure is a lower bound, so only the first write's counts then.
                    if len(self._pos) == 1 and self._first_unreported:
                        self._pos = []
                    self._first_unreported = queued_before <= 0 and not self._pos
                    self._pos.append(start - self._cum)
                # The earliest: a figure read late (a thread preempted as it read it, a driver whose
                # position moves a period at a time, read by a writer that woke late after a move,
                # as after each of a busy CPU's late wakes) is off one way only, later.
                origin = min(self._pos)
                self._pending.append(y)
                self._zero(min(origin, self._origin), self._w)
                self._origin = origin
                self._put(origin, np.concatenate(self._pending))
                self._cum += len(y)
                self._w = origin + self._cum
                return
            self._fresh, self._pending = False, []
            if self._reports:  # (the writes to a device that reports no queue say nothing of its clock)
                self._wdrift += len(y) / (DRIFT_FOLLOW_S * RATE) * (start - self._w - self._wdrift)
            self._put(self._w, y)
            self._w += len(y)
            self._cum += len(y)

    def restarted(self) -> None:
        """The device ran dry (an underrun) and starts again with the next write: that write and
        what follows play after a gap the stream so far says nothing of, so they are laid as a new
        stream, where the device's figures put it (kept contiguous, the reference would lead the
        echo by the gap: on the test rig's PulseAudio, 13 ms, and the canceller settled again)."""
        with self._lock:
            self._restarted = True
            self.restarts += 1
        if self.played is not None:
            self.played.restarted()

    def dropped(self, t: float | None = None) -> None:
        """The device's queue was dropped (stop): what would have played after ``t`` never does."""
        t = time.monotonic() if t is None else t
        now = self._index(t - LEAD_S)
        with self._lock:
            if self._w > now:
                self._zero(max(now, self._r), self._w)
                self._w = max(now, self._r)
            self._fresh, self._pending = False, []
            self._rs = None  # a fresh resampler: no tail of the cut audio
        if self.played is not None:
            self.played.dropped(t)

    # -- capture thread -----------------------------------------------------------------------

    def read(self, t_end: float, n: int) -> np.ndarray:
        """The ``n`` samples (int16, 16 kHz) that played up to ``t_end``; silence where nothing did."""
        start = self._index(t_end) - n
        with self._lock:
            if self._cold and 0 <= self._first_sound <= start + n + STRAY_S * RATE:
                # The first sound is about to be read. Until now the cursor followed the clock,
                # smoothing over the first reads (late, in bursts); from here on it keeps still,
                # at the pace the writes kept meanwhile. No sound was read before, so nothing heard
                # this move. (On a device that reports no queue the reader kept its first place,
                # as before: the rig's FIFO speaker, whose writes say nothing of where the sound
                # is, cancelled less with this start: 26 dB against 37 dB, medians of 15 runs.)
                self._cold = False
                if self._r >= 0 and self._reports:
                    self._drift = self._wdrift
                    self._r -= round(self._wdrift)
            err = start - self._r
            playing = 0 <= self._r < self._w and not (self._cold and self._reports)
            # While audio plays on a device that reports its queue, the cursor keeps the
            # microphone's clock and the writes the speaker's, each drifting from this one: only
            # a departure from the cursor's drift is a stray. One card keeps one pace for both; a
            # microphone on another card drifts apart from the speaker, and is brought back to the
            # writes' pace when that drift would be a stray. A stray must last (lost microphone
            # audio), not be one late read (a stalled capture thread, whose backlog then comes in
            # at once).
            follow = playing and self._reports
            stray = abs(err - self._drift) if follow else abs(err)
            self._strays = self._strays + 1 if playing and stray > SLACK_S * RATE else 0
            off = self._off
            if (self._r < 0 or stray > (STRAY_S if playing else SLACK_S) * RATE or self._strays >= STRAY_FRAMES
                    or (follow and abs(self._drift - self._wdrift - off) > SLACK_S * RATE)):
                was, apart = self._r + off, self._drift - self._wdrift - off
                self._drift = self._wdrift if follow else 0.0
                self._r, self._strays = start - round(self._drift), 0
                if playing:
                    self.read_snaps += 1
                    if not self.follow_gaps:
                        why = ("lost audio" if stray > SLACK_S * RATE else
                               "the microphone drifted %+.0f ms from the speaker" % (apart / 16))
                        _LOG.debug("echo reference: the reader jumped %+.1f ms (%s)", (self._r - was) / 16, why)
                off = self._off = 0.0
            elif follow:
                self._drift += n / (DRIFT_FOLLOW_S * RATE) * (err - self._drift)
                self._off += self._ratio * n
            else:
                self._drift = 0.0
                off = self._off = 0.0
                if not playing:
                    # Nothing playing: follow the clock closely (smoothed over the frames' jitter),
                    # so every reply starts with the same delay and AEC3 need not search again.
                    self._r += int(round(err * 0.25))
            a = self._r
            self._r += n
            if off == 0.0 and self._off == 0.0:
                out = self._samples(a, n)
            else:  # read n samples spanning the writes from a + off to a + n + self._off
                pos = a + off + np.arange(n) * (1.0 + (self._off - off) / n)
                first = int(np.floor(pos[0])) - TAPS // 2 + 1
                x = self._samples(first, int(np.floor(pos[-1])) + TAPS // 2 + 1 - first)
                whole = np.floor(pos)
                taps = _TABLE[np.rint((pos - whole) * PHASES).astype(np.intp)]
                around = sliding_window_view(x, TAPS)[whole.astype(np.intp) - TAPS // 2 + 1 - first]
                out = np.einsum("ij,ij->i", around, taps)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    @property
    def reports_queue(self) -> bool:
        """Whether the device has reported audio queued in it: only then are its writes laid at its
        own pace, and only then can the reader follow that pace (:meth:`adjust_pace`)."""
        return self._reports

    def adjust_pace(self, ppm: float) -> None:
        """The echo drifts against this reference as a speaker ``ppm`` faster than the
        microphone would make it: read what the speaker played that much faster from now on."""
        with self._lock:
            self._ratio += ppm * 1e-6
            if abs(self._ratio) < 1e-12:  # (back on one clock: no rounding left over)
                self._ratio = 0.0
        if self.played is not None:
            self.played.adjust_pace(ppm)

    @property
    def clock_ratio_ppm(self) -> float:
        """How much faster the speaker's clock runs than the microphone's, as followed (0 on one clock)."""
        return self._ratio * 1e6

    # -- internals (caller holds the lock) ----------------------------------------------------

    def _samples(self, a: int, n: int) -> np.ndarray:
        """Timeline samples a .. a + n (float32): silence where nothing was written."""
        out = np.zeros(n, dtype=np.float32)
        lo, hi = max(a, self._w - self._size + 1 if self._w >= 0 else a), min(a + n, self._w)
        if self._w >= 0 and hi > lo:
            out[lo - a : hi - a] = self._buf[np.arange(lo, hi) % self._size]
        return out

    def _put(self, at: int, y: np.ndarray) -> None:
        if len(y) > self._size:
            at, y = at + len(y) - self._size, y[-self._size :]
        if self._first_sound < 0:
            sound = np.flatnonzero(y)
            if len(sound):
                self._first_sound = at + int(sound[0])
        i = at % self._size
        first = min(len(y), self._size - i)
        self._buf[i : i + first] = y[:first]
        self._buf[: len(y) - first] = y[first:]

    def _zero(self, a: int, b: int) -> None:
        if b - a >= self._size:
            self._buf[:] = 0.0
            return
        if b > a:
            self._put(a, np.zeros(b - a, dtype=np.float32))
