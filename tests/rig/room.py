"""A simulated room for echo-cancellation tests: what the speaker plays, as the microphone hears it.

The loudspeaker's signal goes through mild soft clipping (a small speaker's nonlinearity), a
device delay, and a generated room impulse response (exponential decay with the given RT60 and
a direct path), then microphone noise is added. :func:`mix` sums that echo with a near-end
talker at a speech-to-echo ratio. Everything is numpy at 16 kHz (the capture rate), so the same
room serves the offline benchmark and the real-time rig process (:mod:`tests.rig.room_io`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RATE = 16000


def rir(rt60_s: float, rate: int = RATE, seed: int = 0, distance_m: float = 0.15, volume_m3: float = 50.0) -> np.ndarray:
    """A room impulse response: a direct path, then exponentially decaying diffuse reflections.

    The direct-to-reverberant ratio follows from the critical distance of a room of ``volume_m3``
    with this RT60 (Sabine: r_c = 0.057 sqrt(V / RT60)) and the speaker-to-mic ``distance_m``.
    """
    rng = np.random.default_rng(seed)
    n = int(rt60_s * rate)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s)  # -60 dB at rt60
    tail[: int(0.002 * rate)] = 0.0  # the first reflections arrive a few ms after the direct sound
    # A few early reflections off the table and the walls.
    for ms, g in ((2.5, 0.5), (4.1, -0.35), (7.3, 0.25), (11.0, 0.2)):
        tail[int(ms * rate / 1000)] += g * rng.uniform(0.7, 1.0)
    r_c = 0.057 * np.sqrt(volume_m3 / rt60_s)
    drr_db = 20 * np.log10(r_c / distance_m)
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
    h = tail
    h[0] = 1.0
    return (h / np.sqrt(np.sum(h**2))).astype(np.float64)


def soft_clip(x: np.ndarray, drive: float = 1.5) -> np.ndarray:
    """A loudspeaker's mild saturation on float audio in [-1, 1]."""
    return np.tanh(drive * x) / np.tanh(drive)


@dataclass(frozen=True)
class Room:
    """How the loudspeaker reaches the microphone."""

    rt60_s: float = 0.4
    delay_ms: float = 30.0
    echo_dbfs: float = -24.0  # RMS of the echo at the microphone for a speech reply at full volume
    noise_dbfs: float = -70.0  # microphone self-noise (white)
    seed: int = 0
    clock_ppm: float = 0.0  # the sound card's clock against the system clock (the rig's room process)

    def impulse(self) -> np.ndarray:
        h = rir(self.rt60_s, seed=self.seed)
        return np.concatenate([np.zeros(int(self.delay_ms * RATE / 1000)), h])

    def echo(self, played: np.ndarray, ref_rms: float = 0.1) -> np.ndarray:
        """Float echo at the mic (full scale 1.0) of int16 ``played``; ``ref_rms`` sets the echo level."""
        x = soft_clip(np.asarray(played, dtype=np.float64) / 32768.0)
        y = np.convolve(x, self.impulse())[: len(x)]
        return y * (10 ** (self.echo_dbfs / 20) / ref_rms)

    def noise(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1000)
        return rng.standard_normal(n) * 10 ** (self.noise_dbfs / 20)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2))) if len(x) else 0.0


def active_rms(x: np.ndarray, rate: int = RATE) -> float:
    """RMS over the 20 ms blocks within 30 dB of the loudest (speech level without its pauses)."""
    b = rate // 50
    blocks = np.asarray(x[: len(x) // b * b], dtype=np.float64).reshape(-1, b)
    e = np.mean(blocks**2, axis=1)
    keep = e > e.max() * 1e-3
    return float(np.sqrt(np.mean(e[keep]))) if keep.any() else 0.0


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def mix(echo: np.ndarray, near: np.ndarray | None, ser_db: float, at: int = 0) -> np.ndarray:
    """``echo`` (float) plus ``near`` (int16 speech) placed at sample ``at``, scaled so the near
    speech's active level is ``ser_db`` above the echo's."""
    out = echo.copy()
    if near is not None and len(near):
        s = np.asarray(near, dtype=np.float64) / 32768.0
        s *= active_rms(echo) * 10 ** (ser_db / 20) / max(active_rms(s), 1e-9)
        end = min(len(out), at + len(s))
        out[at:end] += s[: end - at]
    return out


def erle_db(mic: np.ndarray, out: np.ndarray) -> float:
    """Echo return loss enhancement: mic power over output power (same span, far-end only)."""
    return 10 * np.log10(max(rms(mic), 1e-12) ** 2 / max(rms(out), 1e-12) ** 2)


def envelope(x: np.ndarray, rate: int = RATE, ms: int = 20) -> np.ndarray:
    """RMS envelope in ``ms`` blocks."""
    b = rate * ms // 1000
    blocks = np.asarray(x[: len(x) // b * b], dtype=np.float64).reshape(-1, b)
    return np.sqrt(np.mean(blocks**2, axis=1))


def envelope_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the 20 ms envelopes (the near-end speech surviving double talk)."""
    ea, eb = envelope(a), envelope(b)
    n = min(len(ea), len(eb))
    return float(np.corrcoef(ea[:n], eb[:n])[0, 1])


def speech_start(x: np.ndarray, at: int, rate: int = RATE) -> int | None:
    """Where, from sample ``at`` of int16 ``x``, 60 ms in a row of 10 ms blocks above -32 dBFS end:
    where the realtime simulator's voice detection (services/simulator.py) starts a turn; or None."""
    b, run = rate // 100, 0
    for i in range(at, len(x) - b + 1, b):
        run = run + 1 if rms(x[i : i + b].astype(np.float64) / 32768.0) >= 10 ** (-32 / 20) else 0
        if run == 6:
            return i + b
    return None


def aligned_envelope_correlation(x: np.ndarray, ref: np.ndarray, a: int, b: int, max_lag: int = 640) -> float:
    """:func:`envelope_correlation` of ``x[a:b]`` with ``ref[a:b]``, at the lag (0 to 40 ms late)
    where it is highest: an echo canceller's output lags its input by its processing latency."""
    return max(envelope_correlation(x[a + lag : b + lag], ref[a:b]) for lag in range(0, max_lag + 1, 32))


class RoomProcess:
    """The room between the rig's speaker FIFO and microphone FIFO (tests/rig/room_io.py)."""

    def __init__(self, rig, room: Room, outdir, speaker: str = "test_spk_fifo", mic: str = "test_mic") -> None:
        import dataclasses
        import json
        from pathlib import Path

        from tests.rig.alsa import _Process

        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self._n = 0
        source = f"pulse:{rig.pulse_socket}" if speaker == "test_pulse" else rig.pcms[speaker].path
        proc = _Process([source, rig.pcms[mic].path, str(self.outdir), json.dumps(dataclasses.asdict(room))],
                        script=Path(__file__).with_name("room_io.py"))
        self.proc = proc
        rig._procs.append(proc)
        if proc.wait_event("open", 10) is None:
            raise RuntimeError("the room process did not start")

    def talk(self, samples16k: np.ndarray, gain: float = 1.0) -> int:
        """Queue a near-end talker (int16 16 kHz) scaled by ``gain``; returns its id."""
        self._n += 1
        path = self.outdir / f"talk-{self._n}.raw"
        np.asarray(samples16k, dtype="<i2").tofile(path)
        self.proc.send(op="play", id=self._n, path=str(path), gain=gain)
        return self._n

    def mic(self) -> np.ndarray:
        """Everything written to the microphone so far (float, full scale 1.0)."""
        return np.fromfile(self.outdir / "mic.raw", dtype="<f4")

    def near(self) -> np.ndarray:
        """The near-end talker alone, sample for sample with :meth:`mic`."""
        return np.fromfile(self.outdir / "near.raw", dtype="<f4")
