"""The microphone front-end: echo cancellation, noise suppression and gain control.

Runs in the capture's reader thread on every 80 ms frame, before the wake word and the session see it.
The echo canceller's far end is what the speaker played, from
:class:`device.audio.reference.PlaybackReference`, already aligned to the capture clock.

Echo cancellation runs two cancellers side by side on the microphone. WebRTC's AEC3
(pywebrtc-audio: WebRTC's audio processing module, with its high-pass filter, noise suppression
and gain control) cleans what the session hears: it removes the echo almost entirely, so the
server's voice detection does not fire on the speaker's own reply. Its nonlinear suppressor
also carves into a person who talks over the reply, which the wake engine cannot bear: the
wake engine hears a linear canceller's output instead (:mod:`device.audio.linear_echo`), which
subtracts the estimated echo and leaves a voice as it was. The session hears AEC3's output with
the linear canceller's bins wherever a person dominates them (:mod:`device.audio.double_talk`).
(Chaining the two, linear first, gave the session less echo reduction, not more: AEC3 then
chases a moving residual.)

A cold AEC3 is cautious for its first second, then leaks bursts of echo until it has heard about
two seconds of the speaker: frames are marked ``echo_settled=False`` until the echo canceller has
shown that it cancels the echo, and the conversation does not stream a reply's microphone audio
before then (the wake word interrupts it instead). It shows that sooner than AEC3 learns alone: once
the linear stage cancels the echo by LEARNT_DB, AEC3 is trained on the path the linear stage learnt
(noise played through it, computed, as for a kept path: below), and the two are tried on the next
half second of the reply; at the latest, it is settled once it has heard SETTLE_S of the speaker.
That happens once per boot (for under a second, with an echo path kept from before: below); a reset
(unmuting) keeps what AEC3 learnt. It happens again when the echo path changes (the speaker is
moved): AEC3 leaks the new echo while it learns it. And for HOLD_S after the speaker ran dry (an underrun)
or the microphone lost audio while the speaker played: the reference may not line up with the echo for a
moment. The linear stage's delay estimator measures the
echo's delay while the speaker plays (every 0.16 s over a reply's first second, then every 0.5 s), and
moves the filter once two measures agree; the first measure that finds the echo elsewhere, and no
longer where it was, unsettles the frames at once.

A microphone on another card than the speaker keeps another clock: the echo's delay then moves
steadily one way. The delay estimator's measures show it; once they do, the reference is told
the speaker's pace (:meth:`PlaybackReference.adjust_pace`) and the echo keeps one delay. The pace
is handed on (:attr:`EchoFrontEnd.on_pace`) to be kept across restarts (:mod:`device.audio.echo_memory`).

So is the echo path the linear stage learnt (:attr:`EchoFrontEnd.on_path`, after a reply it
cancelled well). Started from a kept path (:meth:`EchoFrontEnd.start_from`), the linear stage
cancels from the first word, and AEC3 is trained before the first reply: it hears a few seconds of
noise played through that path (computed, nothing is played). Whether the path still holds shows
early in the first reply: where the echo is first found (a sound server's latency may differ from
one start to the next), the linear stage moves the path, and AEC3 is trained again if that is more
than a millisecond away; if both then cancel the echo (the linear stage by 10 dB over the next
0.32 s, AEC3 by 20 dB at its end), frames are settled from then on. If not (the speaker was moved while the daemon was off),
the canceller settles as a cold one does, both stages learning the new path from the old.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from device.audio.double_talk import CLIP_ECHO, CLIPPED, NearEndBlend
from device.audio.echo_memory import EchoPath
from device.audio.linear_echo import LAG_MARGIN, LinearEchoCanceller
from device.audio.resample import WAKE_RATE, FrameAssembler

if TYPE_CHECKING:
    from collections.abc import Callable

    from device.audio.frames import AudioFrame
    from device.audio.reference import PlaybackReference
    from device.config import AudioConfig

_LOG = logging.getLogger(__name__)

NS_LEVELS = 4  # noise_suppression 1..4 -> WebRTC's levels 0..3 (6, 12, 18, 21 dB)
# AEC3 starts cautious, then leaks bursts of echo (to -34 dBFS in bench/aec.py's rooms) until it has
# heard about 2 s of the speaker; unmuting (reset) does not make it cold again.
SETTLE_S = 3.0
FAR_ACTIVE = (10 ** (-55 / 20) * 32768.0) ** 2  # mean square of a far-end frame that counts as playing
# The echo found this much earlier or later: it has moved (the linear stage follows smaller moves, which
# two clocks drifting apart make in steps of 3 ms), and AEC3 must learn it again.
RESETTLE_MS = 5.0
# A single measure that far away, as clear as DOUBT_PEAK of the echo's usual peak, with the echo no longer
# showing where it was (below DOUBT_GONE standard deviations there), unsettles at once (a new path is
# confirmed only by the next measure). Stray measures (a few in 40 replies in bench/aec.py's long run)
# peaked at 8-33 standard deviations (the echo, usually: ~70; a moved echo's first measure: 22-77),
# most of them within DOUBT_EDGE_MS of the ends of the lags measured, or with the echo still there.
DOUBT_PEAK = 0.25
DOUBT_GONE = 4.0
# A measure elsewhere as clear as DOUBT_STRONG of the echo's usual peak unsettles even where the echo still
# shows where it was: its second of audio straddles the move (on the test rig's FIFO speaker, whose hidden
# delay once fell 50 ms in a reply: 67 against the usual 74, the old place still at 13, and the leak started
# a turn). Stray measures peaked at up to 0.55 of the usual (bench/aec.py --only long,moved).
DOUBT_STRONG = 0.75
DOUBT_EDGE_MS = 5.0
# A microphone on another card than the speaker: the echo's delay moves steadily one way (0.1 ms a
# second at 100 ppm). Its measures (twice a second while the speaker plays) over the last
# PACE_WINDOW_S, at least PACE_MIN_MEASURES spanning PACE_SPAN_S, give that drift; a drift of
# PACE_MIN_PPM or more, well beyond the measures' scatter, is handed to the reference.
PACE_WINDOW_S = 90.0
PACE_SPAN_S = 40.0
PACE_MIN_MEASURES = 20
PACE_MIN_PPM = 10.0
# The speaker loud enough to make the microphone clip: clipped echo is not what was played, and the
# linear stage (what the wake engine hears) removes little of it (bench/aec.py --only clip). A frame
# clipped where the linear stage's echo estimate is CLIP_ECHO loud is the speaker's own sound (a person
# shouting into the microphone is not in that estimate); CLIP_FRAMES of them within CLIP_WINDOW_S
# are logged, at most every CLIP_REPEAT_S (with CLIPPING, which `speaker check` says too).
CLIP_FRAMES = 5
CLIP_WINDOW_S = 60.0
CLIP_REPEAT_S = 600.0
CLIPPING = ("clipped echo is not what was played, and little of it is removed from what the wake word hears, so the "
            "wake word is missed over replies; lower audio.volume or the microphone's capture gain (alsamixer)")

# Started from a kept echo path: AEC3 hears TRAIN_S of noise at TRAIN_DBFS through it, then TRAIN_QUIET_S
# of silence (microphone noise at TRAIN_NOISE_DBFS), as before a reply; all computed at start. (Trained
# on noise straight into a reply, it leaked up to -50 dBFS in the reply's first second; with 10 s of
# silence between, nothing above -66.) In the first reply, the linear stage moves the path to where the
# echo is first found (at once within KEPT_DELAY_MS of where it was, elsewhere by two measures that
# AGREE); if that is more than KEPT_DELAY_MS from where it was, AEC3 is trained again there
# (a sound server's latency differs from one start to the next: by a few ms, and now and then by 84 ms,
# on the test rig's PulseAudio; AEC3 follows an echo that comes later than it learnt, but one that comes
# 3 ms earlier it leaked loudly, in one room of four). The path holds when the linear stage then cancels
# KEPT_HOLDS_DB over the next KEPT_CHECK_S of the speaker playing, and AEC3 KEPT_AEC3_DB (or to below
# -60 dBFS) over the last KEPT_AEC3_FRAMES of them (trained again in the middle of a reply, it leaks the
# next three frames: the check then lasts RETRAINED_S longer).
TRAIN_S = 2.0
TRAIN_QUIET_S = 1.0
TRAIN_DBFS = -26.0
TRAIN_NOISE_DBFS = -70.0
KEPT_DELAY_MS = 1.0
AGREE = 16  # samples: two measures this close agree
TRIAL_EVERY_S = 0.16  # how often the echo's delay is measured until it is first found in a trial (else every 0.5 s)
# ... and over a reply's first WATCH_S after a pause: on the test rig's FIFO speaker the echo once came back 42 ms
# later, and the server heard AEC3's leak of it 0.52 s into the reply, where the first measure came at 0.6 s.
WATCH_S = 1.0
KEPT_CHECK_S = 0.32
KEPT_HOLDS_DB = 10.0
KEPT_AEC3_FRAMES = 2
KEPT_AEC3_DB = 20.0
KEPT_AEC3_QUIET = (10 ** (-60 / 20) * 32768.0) ** 2  # ... or leaves less than -60 dBFS (mean square)
RETRAINED_S = 0.24
# With no path kept (the first boot), and after the echo path changed: once the linear stage cancels
# LEARNT_DB over the last LEARNT_FRAMES of the speaker playing, AEC3 is trained on what it learnt, and
# the two are tried as a kept path is (in bench/aec.py's rooms: settled 2.1-2.6 s into the first reply,
# against SETTLE_S; with 10 dB, 1.8-2.2 s, but the first frame trusted leaked up to -49 dBFS). A path
# that does not hold yet is learnt further and tried again.
LEARNT_FRAMES = 4
LEARNT_DB = 14.0
# The speaker ran dry (an underrun) or the microphone lost audio while the speaker played (a starved CPU, a
# stalled SD card): the reference is laid again where the devices' figures put it, and its echo may then come
# elsewhere than the canceller learnt (on the test rig's PulseAudio speaker, 80-160 ms off at times). A
# reply's microphone audio is held back from the session for HOLD_S (frames unsettled; nothing is learnt
# again), while the echo's delay is measured sooner, so that a moved echo is found before the hold ends.
# With the daemon held to a fifth of a core on that speaker (bench/aec_rig.py --cpu 0.2 --speaker
# test_pulse), a reply interrupted itself 0.6 s after an underrun, and then answered its own echo four
# times; with a 1 s hold, one interrupted itself 1.1 s after one; with this, none of 10 did.
HOLD_S = 2.0
# The echo path is handed on to be kept (on_path) once the speaker has been quiet for KEEP_QUIET_S after
# KEEP_AFTER_S or more of playing, if the linear stage cancelled its last KEEP_LAST_S by KEEP_DB or more
# (a microphone that clips on the echo, or a person talking, leaves less); at most every KEEP_EVERY_S
# unless its delay moved.
KEEP_QUIET_S = 1.0
KEEP_AFTER_S = 2.0
KEEP_LAST_S = 2.0
KEEP_DB = 15.0
KEEP_EVERY_S = 600.0

__all__ = ["EchoFrontEnd", "frontend_for"]


@dataclass
class _Trial:
    """An echo path on trial: one kept from before, in the first reply (where is its echo found?),
    or the one the linear stage is learning (has it learnt enough?); then, do both stages cancel
    it?"""

    delay: int | None  # samples, as kept (None: not kept; learnt here)
    taps: np.ndarray | None  # (None: the linear stage's, once it cancels LEARNT_DB)
    candidate: int | None = None  # the last measure, not yet found again
    found: bool = False
    found_at: int = 0  # microphone samples heard when it was found
    mic: float = 0.0  # power of the microphone and of the linear stage's output since it was found
    left: float = 0.0
    samples: int = 0
    check_s: float = KEPT_CHECK_S  # how long they are measured
    last: list[tuple[float, float]] = field(default_factory=list)  # (microphone, AEC3's output) power per frame
    learnt: bool = False  # the path the linear stage learnt in this run, not one kept from before


class EchoFrontEnd:
    """AEC3 + NS + AGC2 with double-talk blending (the session's audio) and a linear canceller (the
    wake engine's) on 16 kHz mono int16, one 80 ms frame at a time (not thread-safe).

    ``noise_suppression``: 0 off, 1..4 gentle to aggressive. ``auto_gain``: 0 off, else the level
    in dB below full scale that speech is brought up to (at most 30 dB of gain).
    """

    def __init__(self, *, echo_cancellation: bool, noise_suppression: int = 0, auto_gain: int = 0,
                 reference: PlaybackReference | None = None) -> None:
        import pywebrtc_audio

        if not 0 <= noise_suppression <= NS_LEVELS:
            raise ValueError(f"noise_suppression must be 0..{NS_LEVELS}, not {noise_suppression}")
        if not 0 <= auto_gain <= 31:
            raise ValueError(f"auto_gain must be 0..31, not {auto_gain}")
        self.echo_cancellation = echo_cancellation
        self.noise_suppression = noise_suppression
        self.auto_gain = auto_gain
        self.reference = reference
        self._apm = pywebrtc_audio.AudioProcessor(
            WAKE_RATE,
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression > 0,
            high_pass_filter=echo_cancellation or noise_suppression > 0,
            ns_level=max(0, noise_suppression - 1),
        )
        self._linear = LinearEchoCanceller(WAKE_RATE) if echo_cancellation else None
        self._blend = NearEndBlend() if echo_cancellation else None
        self.wake_audio: np.ndarray | None = None  # the linear stage's output of the last frame
        self.aec3_audio: np.ndarray | None = None  # AEC3's output of the last frame, before blending
        self._agc = None
        if auto_gain:
            self._agc = pywebrtc_audio.GainController(WAKE_RATE, headroom_db=float(auto_gain), max_gain_db=30.0,
                                                      max_output_noise_level_dbfs=-50.0)
        self.failures = 0
        self._to24 = FrameAssembler(WAKE_RATE, 1)
        self._far_heard = 0  # samples of far end AEC3 has heard playing
        self._heard = 0  # samples of microphone processed
        self._lags: deque[tuple[int, int]] = deque()  # (when, the echo's delay) measured since it last moved
        self._paced = False  # the reference was told a pace this run
        self._clips: deque[int] = deque()  # when frames clipped on the speaker's own sound (samples heard)
        self._clip_said = -1  # when that was last logged
        self.clipped_frames = 0  # frames that clipped on the speaker's own sound (for tests)
        # Called (in the capture thread) with the speaker's pace the reference now follows, each time it changes.
        self.on_pace: Callable[[float], None] | None = None
        # Called (in the capture thread) with the echo path the linear stage learnt, after a reply it cancelled well.
        self.on_path: Callable[[EchoPath], None] | None = None
        self._reply: deque[tuple[float, float]] = deque()  # (microphone, linear stage) power of the speaker's frames
        self._reply_n = 0  # samples the speaker has played since it was last quiet
        self._quiet = 0  # samples since the speaker last played
        self._path_kept: tuple[int, int] | None = None  # (when, the delay) the path was last handed on
        self._trial: _Trial | None = None  # an echo path on trial
        self._echo_peak = 0.0  # how clearly the echo's delay usually peaks in its measures (standard deviations)
        if self._linear is not None:
            self._measure_every = self._linear.delays.every  # how often the echo's delay is usually measured
            self._learn()
        self._watch = 0  # samples left of a reply's start, while its echo's delay is measured sooner
        self._hold = 0  # samples left while a reply's microphone audio is held back (HOLD_S)
        self._mishaps = 0  # the reference's underruns and jumps, as last seen
        self.holds = 0  # times it was held back (for logs and tests)

    @property
    def label(self) -> str:
        """What this front-end does, for the log: e.g. ``echo cancellation and noise suppression``."""
        parts = [name for name, on in (("echo cancellation", self.echo_cancellation),
                                       ("noise suppression", self.noise_suppression > 0),
                                       ("gain control", self.auto_gain > 0)) if on]
        return " and ".join(parts) or "high-pass filter"

    @property
    def advice(self) -> str:
        """How to take this front-end's cost off the CPU (the config keys), for the log."""
        keys = [key for key, on in (("audio.echo_cancellation = false", self.echo_cancellation),
                                    ("audio.noise_suppression = 0", self.noise_suppression > 0),
                                    ("audio.auto_gain = 0", self.auto_gain > 0)) if on]
        return f"; {self.label}'s part goes with {', '.join(keys)}" if keys else ""

    @property
    def echo_learnt(self) -> bool:
        """Whether the echo canceller has heard enough of the speaker (SETTLE_S) to be trusted with
        its echo (True without echo cancellation: there is nothing to wait for)."""
        return self._linear is None or self._far_heard >= SETTLE_S * WAKE_RATE

    @property
    def echo_settled(self) -> bool:
        """Whether a reply's microphone audio may reach the session: the canceller has learnt the
        echo (:attr:`echo_learnt`), and the reference has not just lost its place (HOLD_S)."""
        return self.echo_learnt and self._hold <= 0

    @property
    def path_taps(self) -> int:
        """How many taps an echo path has (:mod:`device.audio.echo_memory`); 0 without echo cancellation."""
        return self._linear.taps if self._linear is not None else 0

    @property
    def echo_lag_ms(self) -> float | None:
        """How long after the reference the echo arrives, as the linear stage found it (None: not yet)."""
        if self._linear is None or self._linear.delays.delay is None:
            return None
        return self._linear.delays.delay * 1000.0 / WAKE_RATE

    @property
    def echo_lag_measured_ms(self) -> float | None:
        """The last measure of the echo's delay behind the reference (ms; the linear stage
        realigns only on moves over 3 ms, so this is finer than :attr:`echo_lag_ms`)."""
        if self._linear is None or self._linear.delays.lag is None:
            return None
        return self._linear.delays.lag * 1000.0 / WAKE_RATE

    def describe(self) -> str:
        parts = ["echo cancellation" if self.echo_cancellation else "no echo cancellation"]
        parts.append(f"noise suppression {self.noise_suppression}" if self.noise_suppression else "no noise suppression")
        parts.append(f"auto gain -{self.auto_gain} dBFS" if self.auto_gain else "no auto gain")
        return ", ".join(parts)

    def process16k(self, near: np.ndarray, far: np.ndarray | None = None, played: np.ndarray | None = None) -> np.ndarray:
        """Clean ``near`` (int16 at 16 kHz, a multiple of 16 ms) given what the speaker played
        meanwhile: ``far`` as AEC3 wants it (never jumping), ``played`` as the linear stage wants
        it (with the device's unreported gaps; ``far`` when not given)."""
        if self._linear is not None:
            if far is None or len(far) != len(near):
                far = np.zeros(len(near), dtype=np.int16)
            if played is None or len(played) != len(near):
                played = far
            delays = self._linear.delays
            was, confirmed, measures = delays.delay, delays.confirmed, delays.measures
            playing = float(np.mean(far.astype(np.float64) ** 2)) > FAR_ACTIVE
            self._pace_measures(playing, len(near))
            self.wake_audio = self._linear.process(near, played)
            self._heard += len(near)
            if int(near.max()) >= CLIPPED or int(near.min()) <= -CLIPPED:
                self._clipped(near)
            if self._linear.delays.delay != was:
                self._echo_moved(was)
            elif delays.measures != measures:
                self._echo_measured(delays.last)
            if delays.confirmed != confirmed:
                self._follow_clock(delays.lag)
            if self._far_heard < SETTLE_S * WAKE_RATE and playing:
                self._far_heard += len(far)
                if self.echo_learnt:
                    self._trial = None
                    _LOG.info("echo canceller settled: it has heard %.0f s of the speaker", SETTLE_S)
            out = self.aec3_audio = self._apm.process(near, far)
            self._follow_reply(near, playing)
            if self._trial is not None and self._trial.delay is not None and delays.measures != measures \
                    and delays.last is not None:
                self._trial_found(delays.last)
            if self._blend is not None:
                out = self._blend.process(near, self.wake_audio, out, far)
        else:
            out = self._apm.process(near)
        if self._agc is not None:
            out = self._agc.process(out)
        return out

    def _pace_measures(self, playing: bool, n: int) -> None:
        """How often the echo's delay is measured: every TRIAL_EVERY_S until the echo is first found
        (cold, or a kept path on trial) and over the first WATCH_S of a reply that starts after a
        pause (an echo that moved is noticed before AEC3's leak of it reaches the server), else every
        0.5 s."""
        if playing and self._quiet >= KEEP_QUIET_S * WAKE_RATE:
            self._watch = int(WATCH_S * WAKE_RATE)
        trial = self._trial
        finding = trial is not None and (self._linear.delays.delay is None if trial.learnt else not trial.found)
        self._linear.delays.every = int(TRIAL_EVERY_S * WAKE_RATE) if finding or self._watch > 0 else self._measure_every
        self._watch = max(0, self._watch - n)

    def start_from(self, path: EchoPath) -> None:
        """Start from an echo path learnt before this boot (:mod:`device.audio.echo_memory`): the
        linear stage takes it, and AEC3 is trained on noise played through it. Frames are settled
        once the first reply shows that the path holds (see KEPT_HOLDS_DB)."""
        if self._linear is None:
            return
        self._linear.restore(path.delay, path.taps)
        self._train(path.delay, path.taps)
        self._trial = _Trial(path.delay, path.taps)

    def _train(self, delay: int, taps: np.ndarray) -> None:
        """Let AEC3 hear noise played through an echo path (and silence after), as if the speaker had."""
        rng = np.random.default_rng(0)
        n = int(TRAIN_S * WAKE_RATE) // 1280 * 1280
        quiet = int(TRAIN_QUIET_S * WAKE_RATE) // 1280 * 1280
        far = np.concatenate([rng.standard_normal(n) * 10 ** (TRAIN_DBFS / 20) * 32768.0, np.zeros(quiet)])
        h = np.concatenate([np.zeros(max(0, delay - LAG_MARGIN)), taps.astype(np.float64)])
        size = 1 << int(np.ceil(np.log2(len(far) + len(h))))
        echo = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(h, size), size)[: len(far)]
        echo += rng.standard_normal(len(far)) * 10 ** (TRAIN_NOISE_DBFS / 20) * 32768.0
        far16, near16 = (np.clip(np.round(x), -32768, 32767).astype(np.int16) for x in (far, echo))
        for i in range(0, len(far16), 1280):
            self._apm.process(near16[i : i + 1280], far16[i : i + 1280])

    def _follow_reply(self, near: np.ndarray, playing: bool) -> None:
        """Per frame: try a kept path on the speaker's first frames, and hand the learnt path on
        after a reply the linear stage cancelled well."""
        if playing:
            mic = float(np.dot(near.astype(np.float64), near.astype(np.float64)))
            left = float(np.dot(self.wake_audio.astype(np.float64), self.wake_audio.astype(np.float64)))
            self._reply.append((mic, left))
            if len(self._reply) * len(near) > KEEP_LAST_S * WAKE_RATE:
                self._reply.popleft()
            self._reply_n += len(near)
            self._quiet = 0
            if self._trial is not None and self._trial.delay is None:
                self._learnt(mic, left)
            elif self._trial is not None and self._trial.found and self._heard > self._trial.found_at:
                self._try_kept(mic, left, float(np.dot(self.aec3_audio.astype(np.float64), self.aec3_audio.astype(np.float64))),
                               len(near))
            return
        self._quiet += len(near)
        if self._quiet < KEEP_QUIET_S * WAKE_RATE or not self._reply_n:
            return
        if self._reply_n >= KEEP_AFTER_S * WAKE_RATE and self.echo_learnt:
            mic, left = (sum(v) for v in zip(*self._reply))
            if 10 * np.log10((mic + 1.0) / (left + 1.0)) >= KEEP_DB:
                self._keep_path()
        self._reply.clear()
        self._reply_n = 0

    def _learn(self) -> None:
        """Put the path the linear stage learns on trial, once it cancels LEARNT_DB."""
        self._trial = _Trial(None, None, learnt=True)

    def _learnt(self, mic: float, left: float) -> None:
        """A frame of the speaker playing while the linear stage learns the path: once it cancels
        LEARNT_DB, AEC3 is trained on that path, and both are tried as a kept path is."""
        trial = self._trial
        if self._linear.delays.delay is None:
            return
        trial.last.append((mic, left))
        del trial.last[:-LEARNT_FRAMES]
        heard, left_over = (sum(v) for v in zip(*trial.last))
        if len(trial.last) < LEARNT_FRAMES or 10 * np.log10((heard + 1.0) / (left_over + 1.0)) < LEARNT_DB:
            return
        if self._far_heard + (KEPT_CHECK_S + RETRAINED_S) * WAKE_RATE >= SETTLE_S * WAKE_RATE:
            return  # too late: the count settles first, and AEC3 just trained would leak at that moment
        trial.delay, trial.taps = self._linear.echo_path()
        trial.last = []
        trial.found, trial.found_at = True, self._heard
        self._train(trial.delay, trial.taps)
        trial.check_s += RETRAINED_S

    def _trial_found(self, lag: int, agreed: bool = False) -> None:
        """A kept path on trial: the echo was measured ``lag`` samples behind the reference (twice,
        if ``agreed``)."""
        trial = self._trial
        if trial.found:
            return
        near = abs(lag - trial.delay) <= KEPT_DELAY_MS * WAKE_RATE / 1000
        if not (near or agreed or (trial.candidate is not None and abs(lag - trial.candidate) <= AGREE)):
            # A measure away from the kept delay must be found again: the first, on the first tenths of a
            # second of a reply, was now and then a stray peak (100 ms, where the echo was at 158).
            trial.candidate = lag
            return
        trial.found, trial.found_at = True, self._heard  # (this frame was cancelled before the path was moved)
        self._linear.move_to(lag, trial.taps)  # (the kept taps, also where the linear stage moved its own)
        if not near:
            self._train(lag, trial.taps)
            trial.check_s += RETRAINED_S

    def _try_kept(self, mic: float, left: float, aec3: float, n: int) -> None:
        trial = self._trial
        trial.mic += mic
        trial.left += left
        trial.last.append((mic, aec3))
        trial.samples += n
        if trial.samples < trial.check_s * WAKE_RATE:
            return
        self._trial = None
        db = 10 * np.log10((trial.mic + 1.0) / (trial.left + 1.0))
        last = trial.last[-KEPT_AEC3_FRAMES:]
        mic_last, aec3_last = (sum(v) for v in zip(*last))
        aec3_db = 10 * np.log10((mic_last + 1.0) / (aec3_last + 1.0))
        quiet = aec3_last / (len(last) * 1280) < KEPT_AEC3_QUIET  # (in a pause of the reply, as good as cancelled)
        lag_ms = (self._linear.delays.delay or 0) / (WAKE_RATE / 1000)
        holds = db >= KEPT_HOLDS_DB and (aec3_db >= KEPT_AEC3_DB or quiet)
        if holds and trial.learnt:
            heard = self._far_heard / WAKE_RATE
            self._far_heard = max(self._far_heard, int(SETTLE_S * WAKE_RATE))
            _LOG.info("echo canceller settled: it learnt the echo path in %.1f s of the speaker (the echo %.0f ms after "
                      "the reference; cancelled by %.0f dB, and by %.0f dB for the session)", heard, lag_ms, db, aec3_db)
        elif holds:
            self._far_heard = max(self._far_heard, int(SETTLE_S * WAKE_RATE))
            _LOG.info("echo canceller settled: the echo path kept from before holds (the echo %.0f ms after the "
                      "reference, was %.0f ms; cancelled by %.0f dB, and by %.0f dB for the session)", lag_ms,
                      trial.delay / (WAKE_RATE / 1000), db, aec3_db)
        elif trial.learnt:
            _LOG.debug("the echo path learnt so far does not hold yet (the echo cancelled by %.0f dB, and by %.0f dB for "
                       "the session): it is learnt further", db, aec3_db)
            self._learn()
        else:
            # The speaker was moved while the daemon was off. Both stages learn the new path from where they are
            # (the linear stage cancelled more, sooner, from the old path moved to the new delay than from
            # nothing; a new, cold AEC3 left more echo once settled than the trained one).
            _LOG.info("the echo path kept from before no longer holds (the echo cancelled by %.0f dB, and by %.0f dB "
                      "for the session): the echo canceller settles again", db, aec3_db)
            self._learn()

    def learnt_path(self) -> EchoPath | None:
        """The echo path the linear stage has learnt (None before it found the echo)."""
        learnt = self._linear.echo_path() if self._linear is not None else None
        return EchoPath(*learnt) if learnt is not None else None

    def _keep_path(self) -> None:
        path = self.learnt_path()
        if path is None or self.on_path is None:
            return
        if self._path_kept is not None:
            when, kept = self._path_kept
            if kept == path.delay and self._heard - when < KEEP_EVERY_S * WAKE_RATE:
                return
        self._path_kept = (self._heard, path.delay)
        self.on_path(path)

    def _clipped(self, near: np.ndarray) -> None:
        """The microphone clipped in this frame: if on the speaker's own sound, count it, and say so
        when it keeps happening."""
        echo = near.astype(np.int32) - self.wake_audio
        if int(np.max(np.abs(echo))) < CLIP_ECHO:
            return  # someone loud close to the microphone, not the speaker
        self.clipped_frames += 1
        self._clips.append(self._heard)
        while self._heard - self._clips[0] > CLIP_WINDOW_S * WAKE_RATE:
            self._clips.popleft()
        if len(self._clips) >= CLIP_FRAMES and (self._clip_said < 0 or self._heard - self._clip_said >= CLIP_REPEAT_S * WAKE_RATE):
            self._clip_said = self._heard
            _LOG.warning("the microphone clips on the speaker's own sound (in %.1f s of the last %.0f s): %s",
                         len(self._clips) * 0.08, CLIP_WINDOW_S, CLIPPING)

    def _echo_moved(self, was: int | None) -> None:
        """The linear stage found the echo at another delay: the speaker (or the device's latency)
        moved, and AEC3 leaks the new path's echo until it has learnt it, as when cold."""
        lag = self._linear.delays.delay or 0
        trial = self._trial
        if trial is not None and not trial.learnt and not trial.found:
            self._trial_found(lag, agreed=True)  # found at another delay than kept: the kept path is tried there
            return
        if was is None or abs(lag - was) <= RESETTLE_MS * WAKE_RATE / 1000:
            _LOG.debug("the echo arrives %.0f ms after the reference", self.echo_lag_ms)
            return
        self._lags.clear()  # a new echo path: its drift is measured from here
        self._trial = None
        _LOG.info("the echo path changed (the echo arrives %.0f ms after the reference, was %.0f ms): the echo "
                  "canceller settles again", self.echo_lag_ms, was * 1000.0 / WAKE_RATE)
        self._far_heard = 0
        self._learn()

    def _echo_measured(self, lag: int | None) -> None:
        """A single measure of the echo's delay (samples). One, while settled, far from where the
        echo was, where the echo is now gone, is most likely a new echo path (the speaker was moved,
        or the device's latency changed), which AEC3 leaks until it has learnt it: it is not trusted
        until it is found again (the linear stage moves then), but frames are unsettled at once.
        That first measure comes within 0.16 s of a reply's start; the second, 0.16 s later."""
        delays = self._linear.delays
        delay = delays.delay
        if lag is None or delay is None:
            return
        if abs(lag - delay) <= RESETTLE_MS * WAKE_RATE / 1000:
            self._echo_peak = delays.peak if not self._echo_peak else 0.8 * self._echo_peak + 0.2 * delays.peak
            return
        if self._trial is not None or not self.echo_learnt or not self._echo_peak:
            return
        gone = delays.score_at(delay)
        edge = DOUBT_EDGE_MS * WAKE_RATE / 1000
        strong = delays.peak >= DOUBT_STRONG * self._echo_peak
        if delays.peak < DOUBT_PEAK * self._echo_peak or (gone > DOUBT_GONE and not strong) \
                or not edge <= lag <= delays.max_lag - edge:
            # (now and then a measure peaks elsewhere, less clearly than the echo does, with the echo still there)
            _LOG.debug("a stray measure of the echo's delay: %.0f ms (a peak of %.0f, the echo's at %.0f ms %.0f, usually %.0f)",
                       lag * 1000.0 / WAKE_RATE, delays.peak, delay * 1000.0 / WAKE_RATE, gone, self._echo_peak)
            return
        _LOG.info("the echo may have moved (measured %.0f ms after the reference, was %.0f ms): the echo canceller "
                  "settles again", lag * 1000.0 / WAKE_RATE, delay * 1000.0 / WAKE_RATE)
        self._far_heard = 0
        self._learn()

    def _follow_clock(self, lag: int | None) -> None:
        """A new measure of the echo's delay (samples): when it keeps moving one way, the
        microphone keeps another clock than the speaker, and the reference is told that drift."""
        if lag is None or self.reference is None or not self.reference.reports_queue:
            return
        self._lags.append((self._heard, lag))
        while self._heard - self._lags[0][0] > PACE_WINDOW_S * WAKE_RATE:
            self._lags.popleft()
        t, lags = (np.array(v, dtype=np.float64) for v in zip(*self._lags))
        if len(t) < PACE_MIN_MEASURES or t[-1] - t[0] < PACE_SPAN_S * WAKE_RATE:
            return
        slope, icept = np.polyfit(t, lags, 1)
        moved = slope * (t[-1] - t[0])
        spread = float(np.std(lags - (slope * t + icept)))
        if abs(slope) * 1e6 < PACE_MIN_PPM or abs(moved) < 4 * spread + 2:
            return
        first, self._paced = not self._paced, True
        was, change = self.reference.clock_ratio_ppm, -slope * 1e6
        if was and abs(was + change) < PACE_MIN_PPM:
            # A pace kept from before that no longer holds (another microphone behind the same
            # name): back on one clock, at exactly the microphone's pace.
            change = -was
            _LOG.info("the speaker keeps the microphone's clock after all: the echo drifted %.1f ms in %.0f s; the echo "
                      "reference now reads the speaker at the microphone's pace, no longer %+.0f ppm off it",
                      moved / 16, (t[-1] - t[0]) / WAKE_RATE, was)
        self.reference.adjust_pace(change)
        if change != -was:
            (_LOG.info if first else _LOG.debug)(
                "the microphone keeps another clock than the speaker: the echo drifted %.1f ms in %.0f s; the echo "
                "reference now reads the speaker %+.0f ppm off the microphone's pace", moved / 16,
                (t[-1] - t[0]) / WAKE_RATE, self.reference.clock_ratio_ppm)
        self._lags.clear()
        if self.on_pace is not None:
            self.on_pace(self.reference.clock_ratio_ppm)

    def process(self, frame: AudioFrame) -> AudioFrame:
        """The capture hook: the same frame with its 16 and 24 kHz audio cleaned."""
        from device.audio.frames import AudioFrame

        near = np.frombuffer(frame.pcm16k, dtype=np.int16)
        far = played = None
        if self.echo_cancellation and self.reference is not None:
            far = self.reference.read(frame.t, len(near))
            if self.reference.played is not None:
                played = self.reference.played.read(frame.t, len(near))
            self._hold = max(0, self._hold - len(near))
            mishaps = getattr(self.reference, "restarts", 0) + getattr(self.reference, "read_snaps", 0)
            if mishaps != self._mishaps:
                self._mishaps = mishaps
                self._hold = int(HOLD_S * WAKE_RATE)
                self._watch = self._hold  # (the echo's delay is measured sooner meanwhile: has it moved?)
                self.holds += 1
                _LOG.debug("the speaker ran dry or the microphone lost audio: a reply's microphone audio is held back "
                           "for %.0f s (%d times so far)", HOLD_S, self.holds)
        try:
            clean = self.process16k(near, far, played)
        except Exception as exc:  # the microphone must keep working: pass the frame on as it is
            self.failures += 1
            if self.failures in (1, 100) or self.failures % 10000 == 0:
                _LOG.error("microphone front-end failed (%s: %s; %d so far): passing audio through", type(exc).__name__, exc, self.failures)
            return frame
        frames = self._to24.feed(clean.tobytes())
        pcm16, pcm24 = frames[0] if frames else (clean.tobytes(), b"")
        wake16 = self.wake_audio.tobytes() if self._linear is not None and self.wake_audio is not None else None
        return AudioFrame(frame.seq, pcm16, pcm24, frame.t, wake16k=wake16, echo_settled=self.echo_settled)

    def reset(self) -> None:
        """After a gap in the audio (mute): forget adaptation state and resampler history."""
        self._apm.reset()
        if self._linear is not None:
            self._linear.forget_audio()  # the room did not change: keep its echo path
        if self._blend is not None:
            self._blend.forget_audio()
        if self._agc is not None:
            self._agc.reset()
        self._to24.reset()


def frontend_for(cfg: AudioConfig, reference: PlaybackReference | None) -> EchoFrontEnd | None:
    """The front-end the ``[audio]`` section asks for, or None when everything is off."""
    if not (cfg.echo_cancellation or cfg.noise_suppression or cfg.auto_gain):
        return None
    fe = EchoFrontEnd(echo_cancellation=cfg.echo_cancellation, noise_suppression=cfg.noise_suppression,
                      auto_gain=cfg.auto_gain, reference=reference if cfg.echo_cancellation else None)
    _LOG.info("microphone front-end: %s", fe.describe())
    return fe
