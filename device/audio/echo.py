"""The microphone front-end: echo cancellation, noise suppression and gain control.

Runs in the capture thread on every 80 ms frame, before the wake word and the session see it.
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
two seconds of the speaker: frames are marked ``echo_settled=False`` until it has heard SETTLE_S,
and the conversation does not stream a reply's microphone audio before then (the wake word
interrupts it instead). That happens once per boot: a reset (unmuting) keeps what AEC3 learnt.
It happens again when the echo path changes (the speaker is moved): AEC3 leaks the new echo
while it learns it, and the linear stage's delay estimator, which notices the new delay about
0.8 s into the next reply, starts the count again.

A microphone on another card than the speaker keeps another clock: the echo's delay then moves
steadily one way. The delay estimator's measures show it; once they do, the reference is told
the speaker's pace (:meth:`PlaybackReference.adjust_pace`) and the echo keeps one delay. The pace
is handed on (:attr:`EchoFrontEnd.on_pace`) to be kept across restarts (:mod:`device.audio.echo_pace`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from device.audio.double_talk import CLIPPED, NearEndBlend
from device.audio.linear_echo import LinearEchoCanceller
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
# clipped where the linear stage's echo estimate is this loud is the speaker's own sound (a person
# shouting into the microphone is not in that estimate); CLIP_FRAMES of them within CLIP_WINDOW_S
# are logged, at most every CLIP_REPEAT_S (with CLIPPING, which `speaker check` says too).
CLIP_ECHO = 16384
CLIP_FRAMES = 5
CLIP_WINDOW_S = 60.0
CLIP_REPEAT_S = 600.0
CLIPPING = ("clipped echo is not what was played, and little of it is removed from what the wake word hears, so the "
            "wake word is missed over replies; lower audio.volume or the microphone's capture gain (alsamixer)")

__all__ = ["EchoFrontEnd", "frontend_for"]


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

    @property
    def echo_settled(self) -> bool:
        """Whether the echo canceller has heard enough of the speaker (SETTLE_S) to be trusted with
        its echo (True without echo cancellation: there is nothing to wait for)."""
        return self._linear is None or self._far_heard >= SETTLE_S * WAKE_RATE

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
            was, confirmed = self._linear.delays.delay, self._linear.delays.confirmed
            self.wake_audio = self._linear.process(near, played)
            self._heard += len(near)
            if int(near.max()) >= CLIPPED or int(near.min()) <= -CLIPPED:
                self._clipped(near)
            if self._linear.delays.delay != was:
                self._echo_moved(was)
            if self._linear.delays.confirmed != confirmed:
                self._follow_clock(self._linear.delays.lag)
            if self._far_heard < SETTLE_S * WAKE_RATE and float(np.mean(far.astype(np.float64) ** 2)) > FAR_ACTIVE:
                self._far_heard += len(far)
                if self.echo_settled:
                    _LOG.info("echo canceller settled: it has heard %.0f s of the speaker", SETTLE_S)
            out = self.aec3_audio = self._apm.process(near, far)
            if self._blend is not None:
                out = self._blend.process(near, self.wake_audio, out, far)
        else:
            out = self._apm.process(near)
        if self._agc is not None:
            out = self._agc.process(out)
        return out

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
        if was is None or abs(lag - was) <= RESETTLE_MS * WAKE_RATE / 1000:
            _LOG.debug("the echo arrives %.0f ms after the reference", self.echo_lag_ms)
            return
        self._lags.clear()  # a new echo path: its drift is measured from here
        _LOG.info("the echo path changed (the echo arrives %.0f ms after the reference, was %.0f ms): the echo "
                  "canceller settles again", self.echo_lag_ms, was * 1000.0 / WAKE_RATE)
        self._far_heard = 0

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
