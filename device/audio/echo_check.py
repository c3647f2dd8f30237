"""`speaker check`: does echo cancellation converge on this device? Plays a probe, measures."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import numpy as np

from device.audio.capture import AudioFrame, Capture
from device.audio.double_talk import CLIPPED
from device.audio.echo import CLIPPING, KEEP_DB, EchoFrontEnd
from device.audio.echo_memory import PathMemory
from device.audio.frames import FRAME_MS
from device.audio.load import WARN_SHARE, available_cores, describe, limiting_share
from device.audio.playback import Playback
from device.audio.reference import PlaybackReference
from device.config import AudioConfig, WakeConfig
from device.wakeword import WakeWord

PROBE_S = 3.0
PROBES = 2  # the probe is played again (once) while the linear stage has not learnt the path well enough to keep
CONVERGED_DB = 20.0
CLIPPED_SHARE = 1e-4  # more clipped samples than this in the probe: the check fails


def probe_signal(seconds: float = PROBE_S, rate: int = 24000) -> np.ndarray:
    """Speech-like probe: pink-ish noise in syllable-length bursts at about -20 dBFS."""
    rng = np.random.default_rng(13)
    n = int(seconds * rate)
    spec = np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / rate), 100.0))
    x = np.fft.irfft(spec, n)
    t = np.arange(n) / rate
    x *= 0.6 + 0.4 * np.sin(2 * np.pi * 4.0 * t)  # a 4 Hz syllable rhythm
    x *= 3300.0 / np.sqrt(np.mean(x**2))
    return np.clip(x, -32768, 32767).astype(np.int16)


class _Tap:
    """The front-end in the capture's reader thread, keeping what it heard and gave, and what it
    cost; the wake word (if given) scores its output in the analysis thread, as in the daemon."""

    def __init__(self, fe: EchoFrontEnd, wake: WakeWord | None = None) -> None:
        self.fe, self.raw, self.clean, self.wake = fe, [], [], []
        self.engine = wake
        self.fe_cpu: list[float] = []  # CPU time the front-end took on each frame, s
        self.wake_cpu: list[float] = []  # ... and the wake word

    def analyze(self, frame: AudioFrame) -> AudioFrame:
        t0 = time.thread_time()
        if self.engine is not None:
            self.engine.process(frame.for_wake)
        self.wake_cpu.append(time.thread_time() - t0)
        return frame

    def process(self, frame: AudioFrame) -> AudioFrame:
        t0 = time.thread_time()
        out = self.fe.process(frame)
        self.fe_cpu.append(time.thread_time() - t0)
        self.raw.append(np.frombuffer(frame.pcm16k, dtype=np.int16))
        self.clean.append(np.frombuffer(out.pcm16k, dtype=np.int16))
        self.wake.append(np.frombuffer(out.for_wake, dtype=np.int16))
        return out

    def reset(self) -> None:
        self.fe.reset()


async def check_echo(cfg: AudioConfig, state_dir: str | Path | None = None, wake: WakeConfig | None = None) -> str:
    """Play the probe on ``cfg.output``, record ``cfg.input`` through the echo canceller and say
    how much echo it removed, and what that and the wake word (``wake``, if given) cost this CPU;
    raises RuntimeError when it does not converge or the CPU cannot keep up. The echo path it
    learnt is kept in ``state_dir`` (if given), for the daemon to start from."""
    loop = asyncio.get_running_loop()
    reference = PlaybackReference()
    pb = Playback(cfg, loop)
    pb.reference = reference
    fe = EchoFrontEnd(echo_cancellation=True, reference=reference)
    engine = None
    if wake is not None:
        with contextlib.suppress(Exception):  # (a model that does not load is the wake word check's to report)
            engine = WakeWord(wake)
    try:
        return await _check(cfg, state_dir, pb, _Tap(fe, engine), loop)
    finally:
        if engine is not None:
            engine.close()


async def _check(cfg: AudioConfig, state_dir: str | Path | None, pb: Playback, tap: _Tap,
                 loop: asyncio.AbstractEventLoop) -> str:
    cap = Capture(cfg, lambda f: None, loop, on_status=lambda msg: None)
    cap.frontend = tap
    cap.analyze = tap.analyze
    pb.start()
    cap.start()
    try:
        deadline = time.monotonic() + 5
        while len(tap.raw) < 4:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no audio from microphone '{cfg.input}'")
            await asyncio.sleep(0.05)
        quiet = len(tap.raw)
        probe = probe_signal()
        played = 0
        while True:
            pb.begin(f"echo-probe-{played}")
            pb.write(probe.tobytes())
            await asyncio.wait_for(pb.drained(), PROBE_S + 5)
            await asyncio.sleep(0.3)
            played += 1
            end = len(tap.raw)
            if played == 1:
                first_end = end
            # The linear stage (what the wake engine hears) converges more slowly than AEC3, later
            # still on a busy CPU or where the echo comes late: once more, while it has not learnt
            # the path well enough to keep it.
            wake_erle = _last_second_db(tap.raw[:end], tap.wake[:end])
            if played >= PROBES or state_dir is None or wake_erle >= KEEP_DB:
                break
    finally:
        cap.stop()
        await pb.close()
    # What the capture's work costs this CPU while the speaker plays (the front-end's busiest): it
    # must be done in each frame's 80 ms, or audio is lost (device/audio/load.py).
    end_wake = min(end, len(tap.wake_cpu))
    shares = (sum(tap.fe_cpu[quiet:end]) / ((end - quiet) * FRAME_MS / 1000),
              sum(tap.wake_cpu[quiet:end_wake]) / (max(1, end_wake - quiet) * FRAME_MS / 1000))
    stages = (tap.fe.label, "wake word") if tap.engine is not None else (tap.fe.label,)
    n_cores = available_cores()
    share = limiting_share(shares[: len(stages)], n_cores)
    what = f"{tap.fe.label} and the wake word" if tap.engine is not None else tap.fe.label
    cost = f"it takes {describe(share, stages, shares[: len(stages)], n_cores)} on this CPU"
    if share >= WARN_SHARE:
        raise RuntimeError(f"this CPU cannot keep up with {what}: {cost}, and past 100 % audio is lost{tap.fe.advice}")
    floor = np.concatenate(tap.raw[:quiet]).astype(np.float64)
    raw = np.concatenate(tap.raw[quiet:first_end]).astype(np.float64)  # the first probe's
    clean = np.concatenate(tap.clean[quiet:first_end]).astype(np.float64)
    tail = slice(16000, None)  # after the first second: converged
    mic_db = 10 * np.log10(np.mean(raw[tail] ** 2) / 32768.0**2 + 1e-12)
    floor_db = 10 * np.log10(np.mean(floor**2) / 32768.0**2 + 1e-12) if len(floor) else -120.0
    erle = 10 * np.log10((np.mean(raw[tail] ** 2) + 1e-9) / (np.mean(clean[tail] ** 2) + 1e-9))
    if mic_db < floor_db + 6:
        return f"the microphone hardly hears the speaker (probe at {mic_db:.0f} dBFS, room at {floor_db:.0f} dBFS): little echo to cancel; {cost}"
    clipped = float(np.mean(np.abs(raw) >= CLIPPED))
    if clipped > CLIPPED_SHARE:
        # Clipped echo is no longer the played audio through the room. The linear stage (what the
        # wake engine hears) then removes 3-12 dB of it instead of about 25, so the wake word is
        # missed over replies; AEC3 copes until the echo is nearly full scale, then leaks it too
        # (bench/aec.py --only clip).
        raise RuntimeError(f"the microphone clips on the speaker's sound ({clipped * 100:.2f} % of samples at full scale, "
                           f"probe heard at {mic_db:.0f} dBFS): {CLIPPING}")
    peak_db = 20 * np.log10(float(np.max(np.abs(raw))) / 32768.0 + 1e-9)
    if erle < CONVERGED_DB:
        raise RuntimeError(f"echo cancellation did not converge: echo reduced by {erle:.1f} dB only "
                           f"(probe heard at {mic_db:.0f} dBFS); check that '{cfg.output}' reports its delay")
    # The linear stage (what the wake engine hears) converges more slowly: its figure over the
    # probe's last second, and the delay it found between what was played and what was heard.
    lag = tap.fe.echo_lag_ms
    heard = f", {lag:.0f} ms after it was played" if lag is not None else ""
    kept = ""
    path = tap.fe.learnt_path()
    if state_dir is not None and path is not None and wake_erle >= KEEP_DB:
        memory = PathMemory(state_dir, microphone=cfg.input, speaker=cfg.output, taps=tap.fe.path_taps)
        if memory.save(path):
            kept = f"; the echo path is kept for the daemon's start ({memory.path})"
    return (f"converges: echo reduced by {erle:.1f} dB (probe heard at {mic_db:.0f} dBFS, peaks {peak_db:.0f} dBFS{heard}); "
            f"for the wake word by {wake_erle:.1f} dB after {PROBE_S * played:.0f} s; {cost}{kept}")


def _last_second_db(raw: list[np.ndarray], cleaned: list[np.ndarray]) -> float:
    """How much echo the linear stage removed over the last second heard (dB)."""
    r = np.concatenate(raw[-13:]).astype(np.float64)[-16000:]
    c = np.concatenate(cleaned[-13:]).astype(np.float64)[-16000:]
    return float(10 * np.log10((np.mean(r**2) + 1e-9) / (np.mean(c**2) + 1e-9)))
