"""Double talk: keep the person's voice in what the session hears while the reply plays.

AEC3 (:mod:`device.audio.echo`) removes the echo almost entirely, but its suppressor also carves
into a person who talks over the reply (the session then hears them broken up). The linear stage
(:mod:`device.audio.linear_echo`) leaves the person intact, with about 20 dB less echo than the
microphone: too much echo for the session's voice detection on its own. This blends the two per
frequency bin, in short-time spectra (256 samples, hop 128, square-root Hann, overlap-add):

- where the linear stage's output holds clearly more than the echo it leaves behind (a residual
  estimated from its echo estimate and a per-bin leak learnt while only the reply plays), the
  person dominates that bin: the linear stage's bin is used;
- everywhere else, and whenever no person is detected in the frame, AEC3's bin, unless it holds
  6 dB more than the linear stage's: AEC3 then let echo through (now and then, for a tenth of a
  second, it misses the echo of a steady voice), and the quieter bin is the linear stage's.

A person is detected per hop: the linear stage left much more than its echo estimate's usual
residual, what it left is incoherent with that estimate (a voice is; the residual of a misadjusted
filter, after the speaker was moved, say, is not), AEC3 did not suppress it entirely, and the
frame is above the noise floor. Within 0.25 s of the converged linear stage cancelling well (a
person's onset: AEC3's suppressor then takes a first vowel down entirely), AEC3 need not have kept
any of it, and a vowel as loud as the echo estimate (or a sound that just rose 9 dB against it:
a talker's "s") is a person up to a coherence of 0.5 (two voices' harmonics can meet over the
~80 ms the coherence is measured on). The detection holds for 128 ms and ends at once when the
linear stage cancels well again. No bin is blended before the linear stage has converged (a cold
start), nor in a hop where the echo clipped the microphone (a loud voice on quieter echo may clip
it and is still heard), nor when nothing has played for a second: then the output is AEC3's, 8 ms
later.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NearEndBlend"]

N = 256  # analysis window (16 ms at 16 kHz)
HOP = N // 2
BAND = slice(5, 65)  # 310-4000 Hz: where speech energy is, for the frame-level decisions
FULL = HOP * (N // 2 + 1) * 32768.0**2  # a band sum of |X|^2 over this is ~ power in full scale

LEAK0 = 0.05  # the linear stage's residual over its echo estimate, per bin, before any is learnt
LEARN = 0.05  # per hop, while only the reply plays
OVER = 2.0  # residual overestimate
TAIL = 0.85  # per hop: the residual estimate decays no faster than reverberation does
PASS_FROM, PASS_FULL = 3.0, 12.0  # person-to-residual power ratio where a bin starts / fully passes
RELEASE = 0.5  # per-hop smoothing of a closing bin gain (opening is immediate)
SMOOTH = 0.5  # per-hop smoothing of the frame-level powers
LEFT = 0.015  # a person talks when the linear stage's output holds at least -18 dB of the echo estimate,
COH_MAX = 0.25  # is incoherent with it (power-weighted magnitude-squared coherence, speech band),
KEPT = 0.0003  # AEC3 kept at least -35 dB of it
ABOVE_NOISE = 100.0  # and it is 20 dB above the noise floor
NOISE_RISE = 1.003  # per hop, the noise floor's minimum tracker rises 0.013 dB (1.6 dB/s) ...
NOISE_MIN = 1e-10  # ... and never falls below -100 dBFS
WARM_HOPS = 4  # hops after a start before the noise floor is tracked (the smoothing settles)
COH_SMOOTH = 0.9  # per-hop smoothing of the spectra the coherence is measured on (~80 ms)
HOLD = 16  # hops (128 ms) a detection lasts
CANCELS = 0.015  # the linear stage's output below -18 dB of its echo estimate: no person
TRUST = 40  # hops of the linear stage cancelling at least 10 dB before any bin is blended
TRUSTED_BELOW = 0.1
FAR_ACTIVE = 10 ** (-50 / 10)  # an echo estimate above -50 dBFS (band power): the reply plays
CLIPPED = 32000  # a microphone sample this loud: the echo went through a clipping converter, which
# no linear filter models (the linear stage's output then holds loud echo): AEC3's bins only, unless a
# person is detected in it (a clip the echo estimate is too quiet to have made: CLIP_ECHO, ECHO_PEAKS)
# A clip is the echo's where the linear stage's echo estimate is loud enough to have made it (a voice
# clips the microphone too): the echo peaks above its estimate by at most ECHO_PEAKS times what the
# linear stage usually leaves (in amplitude), so a filter that usually cancels 20 dB needs an estimate
# at 0.75 of full scale, one that cancels 10 dB or less CLIP_ECHO (half).
CLIP_ECHO = 16384
ECHO_PEAKS = 3.0
# AEC3's output 6 dB louder than the linear stage's in a bin: AEC3 let echo through there (for a
# tenth of a second now and then, both its filter and its suppressor miss the echo of a steady
# voice); the session gets the linear stage's bin.
AEC3_LEAKS = 4.0
# A person's onset: with loud echo in the room, AEC3's suppressor takes a person's first vowel down by
# 40-50 dB (KEPT fails), and the linear stage cancels the echo well in the gap before it (a stop
# consonant's closure, the pause before a word), which ends a detection at once. So within
# ONSET_HOPS (0.25 s) of a hop the linear stage cancelled well, KEPT is not asked for, provided
# that the linear stage usually cancels ONSET_CANCELS_DB or more (its mean in dB over ~0.5 s of hops
# with the reply playing and no person detected): a filter still converging or misadjusted (the
# speaker moved) cancels well now and then, and what it leaves between would pass for a person.
# A frame that holds ONSET_STRONG of the echo estimate needs only ONSET_LOUD_CANCELS_DB: in the first
# reply after a cold start on the test rig (its speaker hides a ~200 ms delay) the mean was still -12
# to -14 dB when a talker said "stop", whose "s" then reached the session a hop late and too short for
# its voice detection (50 ms); excluding such frames from the mean instead let the echo through after
# the speaker moved (bench/aec.py --only moved: -47 dBFS where it was -60).
# Nor after the echo clipped the microphone in the last UNCLIPPED_HOPS (1 s): no linear filter models
# clipped echo, and its residual, incoherent with the echo estimate, would pass for a person too.
# A clip is the echo's where the echo estimate could have made it (CLIP_ECHO, ECHO_PEAKS) and no person
# was detected in the last HOLD hops; a loud voice on top of the echo clips the microphone too, and in a
# hop where only the voice can have clipped it a person may be detected.
# In that window, a frame whose linear output holds ONSET_STRONG (-5 dB) or more of the echo estimate (a
# converged filter leaves 15 dB less) is a person up to a coherence of ONSET_COH_MAX: a talker's vowel
# whose harmonics meet the reply's measured 0.3-0.5 (bench/aec.py --only barge, the first reply too).
# A frame that rose ONSET_RISE (9 dB) since ONSET_RISE_HOPS (32 ms) before, both in level and against
# the echo estimate, to ONSET_RISEN (-10 dB) of it, counts as holding ONSET_STRONG: a new sound the
# estimate does not have (a reply's own onset raises the estimate with it, and its word's end lowers the
# estimate, not the frame). On the rig, a talker's "s" reached ONSET_STRONG only in its fourth hop, by
# when AEC3 had taken its first three down: the session heard 50 ms of it, too short for its voice
# detection.
ONSET_HOPS = 31
ONSET_COH_MAX = 0.5
ONSET_STRONG = 0.3
ONSET_CANCELS_DB = -15.0
ONSET_LOUD_CANCELS_DB = -10.0
ONSET_RISE = 8.0
ONSET_RISE_HOPS = 4
ONSET_RISEN = 0.1
CANCELS_SMOOTH = 0.98
UNCLIPPED_HOPS = 125
IDLE_FRAMES = 12  # frames (~1 s) with nothing playing before the blend rests


class NearEndBlend:
    """Per 16 kHz int16 frame (a multiple of 128 samples): AEC3's output with the linear stage's
    bins where a person talks over the reply. The output lags AEC3's by 128 samples. Not
    thread-safe."""

    def __init__(self) -> None:
        self._win = np.sqrt(np.hanning(N + 1)[:-1])  # periodic: its square overlap-adds to 1
        self._w2tail = self._win[HOP:] ** 2
        bins = N // 2 + 1
        self._leak = np.full(bins, LEAK0)
        self._resid = np.zeros(bins)
        self._gain = np.zeros(bins)
        self._sey = np.zeros(BAND.stop - BAND.start, dtype=complex)  # smoothed cross- and auto-spectra
        self._see = np.zeros(BAND.stop - BAND.start)  # of the linear stage's output and its echo
        self._syy = np.zeros(BAND.stop - BAND.start)  # estimate, in the speech band
        self._prev = np.zeros((3, HOP))  # the last hop of (linear, echo estimate, AEC3), aligned
        self._lin_line = np.zeros(HOP)  # the linear stage's output and echo estimate are 128
        self._est_line = np.zeros(HOP)  # samples ahead of AEC3's: delayed to meet it
        self._ola = np.zeros(HOP)
        self._fa = self._fe = self._fy = 0.0
        self._past = [(0.0, 0.0)] * ONSET_RISE_HOPS  # (fe, fy) after each of the last hops, oldest first
        self._since_cancel = ONSET_HOPS + 1
        self._since_clip = UNCLIPPED_HOPS
        self._since_person = HOLD + 1
        self._cancels_db = 0.0  # how much the linear stage usually cancels (dB, outside detections)
        self._noise: float | None = None
        self._hops = 0
        self._hold = 0
        self._good = 0
        self._idle = IDLE_FRAMES
        self.detected_hops = 0  # hops in which a person was detected (for logs and tests)

    @property
    def trusted(self) -> bool:
        """Whether the linear stage has converged enough for its bins to be used."""
        return self._good >= TRUST

    def process(self, mic: np.ndarray, linear: np.ndarray, aec3: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        """The session's audio for this frame, from the microphone, both cancellers' outputs of it
        and the far end AEC3 was given (None or silence: nothing is playing)."""
        lin = linear.astype(np.float64)
        est = mic.astype(np.float64) - lin  # the echo the linear stage subtracted
        a = aec3.astype(np.float64)
        lin = np.concatenate([self._lin_line, lin])
        est = np.concatenate([self._est_line, est])
        self._lin_line, self._est_line = lin[-HOP:], est[-HOP:]
        lin, est = lin[:-HOP], est[:-HOP]
        playing = (far is not None and bool(np.any(far))) or bool(np.any(est))
        self._idle = 0 if playing else self._idle + 1
        if self._idle >= IDLE_FRAMES:
            return self._rest(lin, est, a)
        hops = len(a) // HOP
        cur = np.stack([lin, est, a]).reshape(3, hops, HOP)
        frames = np.concatenate([np.concatenate([self._prev[:, None, :], cur[:, :-1]], axis=1), cur], axis=2)
        self._prev = cur[:, -1].copy()
        E, Y, A = np.fft.rfft(frames * self._win, axis=2)
        clipped = np.max(np.abs(cur[0] + cur[1]), axis=1) >= CLIPPED
        reach = max(CLIP_ECHO, CLIPPED / (1 + ECHO_PEAKS * 10 ** (self._cancels_db / 20)))
        echo_clips = clipped & (np.max(np.abs(cur[1]), axis=1) >= reach)
        # What each hop needs that does not depend on the hops before it, for all hops at once.
        pe, py = E.real**2 + E.imag**2, Y.real**2 + Y.imag**2
        band_a = (A.real[:, BAND] ** 2 + A.imag[:, BAND] ** 2).sum(axis=1).tolist()
        band_e, band_y = pe[:, BAND].sum(axis=1).tolist(), py[:, BAND].sum(axis=1).tolist()
        cross = (1 - COH_SMOOTH) * E[:, BAND] * np.conj(Y[:, BAND])
        clips, echo_clip = clipped.tolist(), echo_clips.tolist()
        gains = np.empty(E.shape)
        for k in range(hops):
            gains[k] = self._gains(pe[k], py[k], (band_a[k], band_e[k], band_y[k]), cross[k], clips[k], echo_clip[k])
        base = np.where(A.real**2 + A.imag**2 > AEC3_LEAKS * (E.real**2 + E.imag**2), E, A)
        o = np.fft.irfft(base + gains * (E - base), N, axis=1) * self._win
        out = o[:, :HOP].copy()
        out[0] += self._ola
        out[1:] += o[:-1, HOP:]
        self._ola = o[-1, HOP:].copy()
        return np.clip(np.rint(out.reshape(-1)), -32768, 32767).astype(np.int16)

    def forget_audio(self) -> None:
        """After a gap in the audio (mute): drop what was heard, keep what was learnt of the room."""
        self._prev[:] = 0.0
        self._lin_line[:] = 0.0
        self._est_line[:] = 0.0
        self._ola[:] = 0.0
        self._gain[:] = 0.0
        self._resid[:] = 0.0
        self._sey[:] = 0.0
        self._see[:] = 0.0
        self._syy[:] = 0.0
        self._hold = 0
        self._idle = IDLE_FRAMES
        self._fa = self._fe = self._fy = 0.0
        self._past = [(0.0, 0.0)] * ONSET_RISE_HOPS
        self._since_cancel = ONSET_HOPS + 1
        self._since_person = HOLD + 1
        self._hops = 0

    def _rest(self, lin: np.ndarray, est: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Nothing playing: AEC3's output one hop late (what blending with no bin open gives)."""
        out = np.concatenate([self._prev[2], a[:-HOP]])
        self._prev = np.stack([lin[-HOP:], est[-HOP:], a[-HOP:]])
        self._ola = self._w2tail * a[-HOP:]
        self._gain[:] = 0.0
        self._resid[:] = 0.0
        self._hold = 0
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _gains(self, pe: np.ndarray, py: np.ndarray, band: tuple[float, float, float], cross: np.ndarray,
               clipped: bool, echo_clips: bool) -> np.ndarray:
        """Per bin, how much of this hop comes from the linear stage (0: all AEC3's). ``pe``, ``py``: the
        power spectra of the linear stage's output and its echo estimate; ``band``: the speech band's
        power of AEC3's output, and of those two; ``cross``: their cross-spectrum in the band, times
        (1 - COH_SMOOTH)."""
        self._resid = np.maximum(OVER * self._leak * py, TAIL * self._resid)
        snr = np.maximum(pe - self._resid, 0.0) / (self._resid + 1e-3 * N)
        target = np.minimum(np.maximum((snr - PASS_FROM) / (PASS_FULL - PASS_FROM), 0.0), 1.0)  # (np.clip, with less overhead)

        fa, fe, fy = band
        self._fa = SMOOTH * self._fa + (1 - SMOOTH) * fa
        self._fe = SMOOTH * self._fe + (1 - SMOOTH) * fe
        self._fy = SMOOTH * self._fy + (1 - SMOOTH) * fy
        fe0, fy0 = self._past.pop(0)
        self._past.append((self._fe, self._fy))
        self._sey = COH_SMOOTH * self._sey + cross
        self._see = COH_SMOOTH * self._see + (1 - COH_SMOOTH) * pe[BAND]
        self._syy = COH_SMOOTH * self._syy + (1 - COH_SMOOTH) * py[BAND]
        cross = self._sey.real**2 + self._sey.imag**2
        # The linear output's power-weighted coherence with the echo estimate, over the band.
        coherence = float((cross / (self._syy + 1e-3 * N)).sum()) / (float(self._see.sum()) + 1e-3 * N)
        far_active = fy > FAR_ACTIVE * FULL
        if far_active and fe < TRUSTED_BELOW * fy:
            self._good += 1
        # (not from the first hops, whose smoothed power is still rising from zero; never below
        # -100 dBFS, so that a stretch of digital silence cannot pin the floor at zero)
        self._hops += 1
        if self._hops > WARM_HOPS:
            self._noise = max(NOISE_MIN * FULL, self._fe if self._noise is None else min(self._fe, self._noise * NOISE_RISE))
        # A clip is the echo's where the echo estimate is loud, unless a person was just detected (a loud voice
        # on top of the echo).
        self._since_clip = 0 if echo_clips and self._since_person > HOLD else self._since_clip + 1
        if far_active and self._hold == 0 and not clipped:
            self._cancels_db = CANCELS_SMOOTH * self._cancels_db + (1 - CANCELS_SMOOTH) * 10 * np.log10((fe + 1e-3 * N) / fy)
        # A frame holding ONSET_STRONG of the echo estimate, or that just rose to ONSET_RISEN of it.
        loud = self._fe > ONSET_STRONG * self._fy or (
            self._fe > ONSET_RISEN * self._fy and self._fe > ONSET_RISE * fe0 and self._fe * fy0 > ONSET_RISE * fe0 * self._fy)
        # (for a loud frame, a filter that cancels less, as in a first reply, will do)
        onset = (self._since_cancel <= ONSET_HOPS and self._since_clip >= UNCLIPPED_HOPS
                 and (self._cancels_db < ONSET_CANCELS_DB or (self._cancels_db < ONSET_LOUD_CANCELS_DB and loud)))
        incoherent = coherence < COH_MAX or (onset and coherence < ONSET_COH_MAX and loud)
        person = (self._good >= TRUST and not echo_clips and (self._fa > KEPT * self._fe or onset) and self._fe > LEFT * self._fy
                  and self._noise is not None and self._fe > ABOVE_NOISE * self._noise and incoherent)
        self._since_person = 0 if person else self._since_person + 1
        if person:
            self._hold = HOLD
            self.detected_hops += 1
        elif clipped or self._fe < CANCELS * self._fy:
            self._hold = 0
        else:
            self._hold = max(0, self._hold - 1)
        if far_active and self._fe < CANCELS * self._fy:
            self._since_cancel = 0
        else:
            self._since_cancel += 1
        if self._hold == 0:
            target[:] = 0.0
            if far_active and not clipped:  # only the reply: learn what the linear stage leaves of it
                self._leak += LEARN * (np.minimum(pe / (py + 1e-3 * N), 1.0) - self._leak)
        self._gain = np.where(target > self._gain, target, RELEASE * self._gain + (1 - RELEASE) * target)
        return self._gain
