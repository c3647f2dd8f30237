"""A linear echo canceller for the wake word: the reply's echo subtracted, the person left intact.

WebRTC's AEC3 (:mod:`device.audio.echo`) removes the echo almost entirely, but its nonlinear
suppressor also carves into a person who talks over the reply; the wake engine, trained on
clean speech, then misses "hey jarvis" said over the reply. A linear filter alone subtracts
the estimated echo and leaves everything else as it was: 20 dB less echo is enough for the
wake engine. No maintained Python package exposes a linear-only canceller, so this is the
textbook one: a partitioned-block frequency-domain adaptive filter (overlap-save, constrained
gradient, per-bin normalised step) with a foreground/background pair, as Speex's MDF and
AEC3's refined/coarse filters do, so that double talk cannot spoil the filter in use.

The filter spans 256 ms; a device that reports less delay than it has (a FIFO, some USB
cards) would push the echo out of that span, so a delay estimator (GCC-PHAT between the far end
and the microphone, every half second while the speaker plays) finds the bulk delay and the far end
is delayed by it before the filter.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LinearEchoCanceller"]

LAG_MARGIN = 64  # samples (4 ms) of the filter's span kept before the direct sound
MOVE = 48  # samples (3 ms): a delay estimate this far from the last one realigns the filter


def _put(ring: np.ndarray, at: int, x: np.ndarray) -> int:
    """Write ``x`` into ``ring`` from index ``at`` (wrapping); the next index."""
    first = min(len(x), len(ring) - at)
    ring[at : at + first] = x[:first]
    ring[: len(x) - first] = x[first:]
    return (at + len(x)) % len(ring)


def _ordered(ring: np.ndarray, at: int) -> np.ndarray:
    """The ring's contents, oldest first (a copy)."""
    return np.concatenate([ring[at:], ring[:at]])


class DelayEstimator:
    """How many samples the echo lags the far end: GCC-PHAT over the last ``window_s`` of both.

    Feed every block of both; :attr:`delay` is the last estimate found twice in a row (None until
    then). Quiet far ends are skipped: there is nothing to line up.
    """

    def __init__(self, rate: int = 16000, window_s: float = 1.0, every_s: float = 0.5, max_delay_s: float = 0.5) -> None:
        self.size = int(window_s * rate)
        self.every = int(every_s * rate)
        self.max_lag = int(max_delay_s * rate)
        # Rings (the audio path runs 12.5 times a second): in time order only when an estimate is due.
        self._far = np.zeros(self.size + self.max_lag)
        self._near = np.zeros(self.size)
        self._far_at = self._near_at = 0  # next index written in each ring
        self._since = 0
        self._candidate: int | None = None
        self.delay: int | None = None
        self.estimates = 0
        self.lag: int | None = None  # the last estimate found twice in a row, however small its move
        self.confirmed = 0  # ... and how many there were
        self.measures = 0  # estimates made (a clear peak found) ...
        self.last: int | None = None  # ... and the last one, found once
        self.peak = 0.0  # ... its peak, in standard deviations of the correlation
        self._scores = np.zeros(0)  # ... the correlation at each lag, in standard deviations
        self._floor = (10 ** (-55 / 20) * 32768.0) ** 2

    def feed(self, near: np.ndarray, far: np.ndarray) -> bool:
        """Add a block; True when :attr:`delay` changed."""
        n = len(near)
        self._far_at = _put(self._far, self._far_at, far)
        self._near_at = _put(self._near, self._near_at, near)
        self._since += n
        if self._since < self.every:
            return False
        self._since = 0
        far_all, near_all = _ordered(self._far, self._far_at), _ordered(self._near, self._near_at)
        f = far_all[-self.size :]
        if float(np.mean(f * f)) < self._floor or float(np.mean(near_all**2)) < self._floor:
            return False
        lag = self._estimate(far_all, near_all)
        if lag is None:
            return False
        self.measures += 1
        self.last = lag
        same = self._candidate is not None and abs(lag - self._candidate) <= 16
        self._candidate = lag
        if same:
            self.lag, self.confirmed = lag, self.confirmed + 1
        # A move of a few samples is the filter's to follow; a jump is a new delay.
        if same and (self.delay is None or abs(lag - self.delay) > MOVE):
            self.delay = lag
            self.estimates += 1
            return True
        return False

    def recent_far(self, n: int) -> np.ndarray:
        """The far end's last ``n`` samples (at most the window and the longest delay)."""
        return _ordered(self._far, self._far_at)[len(self._far) - n :] if n > 0 else np.zeros(0)

    def score_at(self, lag: int, width: int = 3) -> float:
        """How strongly the last estimate's correlation peaked within ``width`` samples of ``lag``
        (standard deviations; 0 before any estimate)."""
        if not len(self._scores):
            return 0.0
        return float(self._scores[max(0, lag - width) : max(0, lag + width + 1)].max(initial=0.0))

    def _estimate(self, far: np.ndarray, near: np.ndarray) -> int | None:
        # near[t] = far[t - L]: correlate the near window with the far window reaching back max_lag.
        m = self.size + self.max_lag
        nfft = 1 << int(np.ceil(np.log2(m + self.size)))
        F = np.fft.rfft(far, nfft)
        N = np.fft.rfft(np.concatenate([np.zeros(self.max_lag), near]), nfft)
        G = N * np.conj(F)
        r = np.fft.irfft(G / np.maximum(np.abs(G), 1e-9), nfft)[: self.max_lag + 1]
        k = int(np.argmax(r))
        self._scores = r / (float(np.std(r)) + 1e-12)
        self.peak = float(self._scores[k])
        if r[k] < 6.0 * float(np.std(r)) + 1e-12:
            return None  # no clear peak: the far end is not in the microphone (or too little of it)
        return k


class LinearEchoCanceller:
    """Cancels the echo of ``far`` in ``near`` (16 kHz int16, any multiple of ``block``).

    ``taps_ms`` is the echo path the filter can model (device delay left over after the
    playback reference's alignment, plus the room's reverberation). Not thread-safe.
    """

    def __init__(self, rate: int = 16000, block: int = 256, taps_ms: float = 256.0, step: float = 0.6) -> None:
        self.rate = rate
        self.block = block
        self.parts = max(1, int(np.ceil(taps_ms * rate / 1000 / block)))
        self.step = step
        self.reset()

    def reset(self) -> None:
        """Forget the echo path and its delay (a new output device)."""
        self._new_filter()
        self.delays = DelayEstimator(self.rate)
        self._shift = 0  # samples the far end is delayed by before the filter
        self._line = np.zeros(0)  # the far end's last _shift samples

    def _new_filter(self) -> None:
        block = self.block
        bins = block + 1
        # The far-end spectra, and their power, each twice over: rows [head, head + parts) are the
        # last `parts`, newest first, without moving them each block.
        self._ring = np.zeros((2 * self.parts, bins), dtype=np.complex128)
        self._ring_power = np.zeros((2 * self.parts, bins))
        self._head = 0
        self._X = self._ring[: self.parts]  # far-end spectra, newest first (a view of the ring)
        self._W = np.zeros((2, self.parts, bins), dtype=np.complex128)
        self._Wf = self._W[0]  # foreground: what is subtracted
        self._Wb = self._W[1]  # background: adapts always
        self._prev_far = np.zeros(block)
        self._power = np.full(bins, 1e-6)  # smoothed far-end power per bin
        self._eb = self._ef = 0.0  # smoothed error energies of the two filters
        self._far_floor = (10 ** (-70 / 20) * 32768.0) ** 2 * block  # below this the far end is silent
        self._silent = 0  # blocks in a row whose far end was all zeros

    @property
    def taps(self) -> int:
        """How many taps the filter has."""
        return self.parts * self.block

    def echo_path(self) -> tuple[int, np.ndarray] | None:
        """What the filter has learnt: (the echo's delay behind the far end in samples, the filter's
        taps from LAG_MARGIN before it, float32), or None before any delay was found."""
        if self.delays.delay is None:
            return None
        taps = np.fft.irfft(self._Wf, axis=1)[:, : self.block].reshape(-1)
        return self.delays.delay, taps.astype(np.float32)

    def restore(self, delay: int, taps: np.ndarray) -> None:
        """Start from an echo path learnt before (:meth:`echo_path`): the filter cancels from the
        first block, and an echo found at another delay shows as a move of :attr:`delays`."""
        n, parts = self.block, self.parts
        if delay < 0 or len(taps) != parts * n:
            raise ValueError(f"an echo path of {len(taps)} taps at {delay} samples does not fit this filter ({parts * n} taps)")
        self.reset()
        self._set_taps(taps)
        self._shift = max(0, delay - LAG_MARGIN)
        self._line = np.zeros(self._shift)
        self.delays.delay = delay

    def move_to(self, delay: int, taps: np.ndarray) -> None:
        """The echo is found ``delay`` samples behind the far end, where ``taps`` (a restored path's)
        model it: the far end is delayed to match, and the filter is ``taps`` again (what it has
        learnt since, from an echo it was not lined up with, is dropped)."""
        self.delays.delay = delay
        self._realign(delay, follow=False)
        self._set_taps(taps)

    def _set_taps(self, taps: np.ndarray) -> None:
        n, parts = self.block, self.parts
        w = np.concatenate([np.asarray(taps, dtype=np.float64).reshape(parts, n), np.zeros((parts, n))], axis=1)
        self._Wf[:] = self._Wb[:] = np.fft.rfft(w, axis=1)
        self._eb = self._ef = 0.0

    def _set_history(self, spectra: np.ndarray) -> None:
        """The far end's last ``parts`` block spectra, newest first."""
        parts = self.parts
        self._ring[:parts] = self._ring[parts:] = spectra
        self._ring_power[:parts] = self._ring_power[parts:] = np.abs(spectra) ** 2
        self._head = 0
        self._X = self._ring[:parts]

    def forget_audio(self) -> None:
        """After a gap in the audio: drop the far-end history, keep the learnt echo path."""
        self._set_history(np.zeros_like(self._X))
        self._silent = self.parts + 1
        self._line = np.zeros(self._shift)
        self._prev_far = np.zeros(self.block)
        self._power = np.full(self.block + 1, 1e-6)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """``near`` with the echo of ``far`` removed; same length and dtype (int16)."""
        n = self.block
        if len(near) % n or len(far) != len(near):
            raise ValueError(f"near and far must be the same multiple of {n} samples")
        out = np.empty(len(near))
        nf = near.astype(np.float64)
        ff = far.astype(np.float64)
        changed = self.delays.feed(nf, ff)
        if self._shift:
            line = np.concatenate([self._line, ff])
            ff, self._line = line[: len(ff)], line[len(ff) :]
        for i in range(0, len(near), n):
            x = ff[i : i + n]
            if self._silent > self.parts and not x.any():
                # Nothing of the far end is left in the filter's span: no echo to subtract, and
                # nothing to learn (the speaker idles; this is most of a day).
                out[i : i + n] = nf[i : i + n]
                continue
            self._silent = 0 if x.any() else self._silent + 1
            out[i : i + n] = self._block(nf[i : i + n], x)
        if changed:
            self._realign(self.delays.delay or 0)
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    def _realign(self, lag: int, follow: bool = True) -> None:
        """The echo lags the far end by ``lag`` samples: from the next block on, delay the far end
        so the filter's span starts just before the direct sound. What the filter learnt moves
        with it (it has followed the echo there while the delay was measured; with ``follow``
        False it stays), so nothing is learnt again."""
        shift = max(0, lag - LAG_MARGIN)
        delta = shift - self._shift
        if not delta:
            return
        n, parts = self.block, self.parts
        for W in (self._Wf, self._Wb) if follow else ():
            w = np.fft.irfft(W, axis=1)[:, :n].reshape(-1)
            d = min(abs(delta), len(w))
            w = np.concatenate([w[d:], np.zeros(d)]) if delta > 0 else np.concatenate([np.zeros(d), w[: len(w) - d]])
            padded = np.concatenate([w.reshape(parts, n), np.zeros((parts, n))], axis=1)
            W[:] = np.fft.rfft(padded, axis=1)
        # The far end's history as the filter will now see it: the last parts + 1 blocks, delayed.
        past = self.delays.recent_far(shift + (parts + 1) * n)[: (parts + 1) * n]
        blocks = past.reshape(parts + 1, n)
        self._set_history(np.fft.rfft(np.concatenate([blocks[:-1], blocks[1:]], axis=1), axis=1)[::-1])
        self._prev_far = blocks[-1].copy()
        self._shift, self._line = shift, self.delays.recent_far(shift)
        self._silent = 0

    def _block(self, d: np.ndarray, x: np.ndarray) -> np.ndarray:
        n = self.block
        X = np.fft.rfft(np.concatenate([self._prev_far, x]))
        self._prev_far = x
        parts = self.parts
        head = self._head = (self._head - 1) % parts
        self._ring[head] = self._ring[head + parts] = X
        self._ring_power[head] = self._ring_power[head + parts] = np.abs(X) ** 2
        self._X = self._ring[head : head + parts]
        far_energy = float(np.dot(x, x))
        yf, yb = np.fft.irfft(np.sum(self._W * self._X, axis=1))[:, n:]  # both filters at once
        ef, eb = d - yf, d - yb
        if far_energy < self._far_floor:
            return ef  # nothing to learn from: keep the filters as they are
        # Normalised by the far end's power over the whole span the filter covers (per bin).
        self._power = 0.5 * self._power + 0.5 * np.sum(self._ring_power[head : head + parts], axis=0)
        Eb = np.fft.rfft(np.concatenate([np.zeros(n), eb]))
        G = np.conj(self._X) * (Eb / (self._power + 1e-3 * n * n))[None, :]
        g = np.fft.irfft(G, axis=1)
        g[:, n:] = 0.0  # the gradient's constraint: a linear, not circular, convolution
        self._Wb += self.step * np.fft.rfft(g, axis=1)
        # The background replaces the foreground once it cancels clearly better; during double
        # talk its error grows with the person's voice, so the foreground keeps the last good path.
        ebe, efe = float(np.dot(eb, eb)), float(np.dot(ef, ef))
        self._eb = 0.6 * self._eb + 0.4 * ebe
        self._ef = 0.6 * self._ef + 0.4 * efe
        if self._eb < 0.7 * self._ef and ebe < efe:
            self._Wf[:] = self._Wb
            return eb
        if self._ef < 0.5 * self._eb and efe < 0.5 * ebe:
            # The background went astray (double talk): start it again from the good filter.
            self._Wb[:] = self._Wf
        return ef
