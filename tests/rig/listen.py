"""Listening to the rig's FIFO speaker as it plays: when sound starts and when it stops.

The speaker reader (tests/rig/alsa_io.py) consumes the FIFO at real-time pace into a file; a
:class:`Listener` tails that file in a thread and stamps every 10 ms block with the time it
arrived (monotonic and wall clock) and its level, so a test can tell when a sound was heard.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 24000
BLOCK = RATE // 100  # 10 ms of mono S16


@dataclass(frozen=True)
class Block:
    mono: float  # time.monotonic() when the block arrived at the speaker
    wall: float  # time.time() at the same moment
    rms: float  # 0..32768
    offset: int  # sample offset in the output


class Listener:
    """Tails ``path`` (24 kHz mono S16) and records each 10 ms block's arrival time and level."""

    def __init__(self, path: Path, poll_s: float = 0.002) -> None:
        self.path = path
        self.poll_s = poll_s
        self.blocks: list[Block] = []
        self.samples = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)

    def start(self) -> Listener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        pos = 0
        pending = b""
        offset = 0
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(pos)
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            if data:
                mono, wall = time.monotonic(), time.time()
                pos += len(data)
                pending += data
                whole = len(pending) // (2 * BLOCK) * (2 * BLOCK)
                chunk, pending = pending[:whole], pending[whole:]
                x = np.frombuffer(chunk, dtype="<i2").astype(np.float64).reshape(-1, BLOCK)
                rms = np.sqrt(np.mean(x * x, axis=1))
                with self._lock:
                    self.samples += chunk
                    for i, level in enumerate(rms):
                        self.blocks.append(Block(mono, wall, float(level), offset + i * BLOCK))
                offset += x.shape[0] * BLOCK
            time.sleep(self.poll_s)

    def snapshot(self) -> list[Block]:
        with self._lock:
            return list(self.blocks)

    def audio(self) -> np.ndarray:
        with self._lock:
            return np.frombuffer(bytes(self.samples), dtype="<i2")

    def first_sound(self, after_mono: float, threshold: float = 300.0) -> Block | None:
        """The first loud block that arrived after ``after_mono``."""
        for b in self.snapshot():
            if b.mono >= after_mono and b.rms >= threshold:
                return b
        return None

    def last_sound(self, threshold: float = 300.0) -> Block | None:
        """The last loud block heard so far."""
        for b in reversed(self.snapshot()):
            if b.rms >= threshold:
                return b
        return None

    def wait_sound(self, after_mono: float, timeout: float, threshold: float = 300.0) -> Block | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            b = self.first_sound(after_mono, threshold)
            if b is not None:
                return b
            time.sleep(0.005)
        return None

    def wait_quiet(self, quiet_s: float, timeout: float, threshold: float = 300.0) -> Block | None:
        """Wait until nothing loud was heard for ``quiet_s``; returns the last loud block before that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.last_sound(threshold)
            if last is None or time.monotonic() - last.mono >= quiet_s:
                return last
            time.sleep(0.01)
        raise AssertionError(f"the speaker did not fall quiet for {quiet_s} s within {timeout} s")


def locate(haystack: np.ndarray, needle: np.ndarray, good: float = 0.9) -> tuple[int, float]:
    """First offset of ``needle`` in ``haystack`` whose normalised correlation reaches ``good``
    (else the best one), and that correlation."""
    h = haystack.astype(np.float64)
    n = needle.astype(np.float64)
    if len(h) < len(n):
        return 0, 0.0
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[: len(h) - len(n) + 1]
    c = np.concatenate(([0.0], np.cumsum(h * h)))
    energy = np.sqrt(np.maximum(c[len(n):] - c[: len(h) - len(n) + 1], 0.0))
    norm = np.linalg.norm(n)
    score = np.where(energy > 0.05 * norm, corr / (energy * norm + 1e-9), 0.0)
    above = np.flatnonzero(score >= good)
    if len(above):
        # The peak of the first match (the correlation rises over a few samples around it).
        first = int(above[0])
        end = first + 1
        while end < len(score) and score[end] >= good:
            end += 1
        best = first + int(np.argmax(score[first:end]))
    else:
        best = int(np.argmax(score))
    return best, float(score[best])


def heard_at(listener: Listener, template: np.ndarray, after_wall: float) -> tuple[float, float]:
    """Wall-clock time ``template`` was first heard after ``after_wall``, and how well it matched (0-1).

    The time is when the 10 ms block holding its first sample reached the speaker.
    """
    blocks = [b for b in listener.snapshot() if b.wall >= after_wall]
    if not blocks:
        raise AssertionError("nothing reached the speaker after that moment")
    audio = listener.audio()
    start = blocks[0].offset
    offset, score = locate(audio[start:], template)
    at = start + offset
    block = next((b for b in blocks if b.offset + BLOCK > at), blocks[-1])
    return block.wall, score


def wait_sounding(listener: Listener, timeout: float = 5.0) -> None:
    """Until something is sounding right now (so a stop lands in a burst, not in a gap)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = listener.last_sound()
        if b is not None and time.monotonic() - b.mono < 0.03:
            return
        time.sleep(0.003)
    raise AssertionError("the speaker is silent")


def silenced_after(listener: Listener, t_stop: float, quiet_s: float = 1.0) -> float:
    """Seconds from ``t_stop`` (monotonic) to the end of the last sound, once quiet for ``quiet_s``."""
    last = listener.wait_quiet(quiet_s, 6 + quiet_s)
    if last is None:
        return 0.0
    return max(0.0, last.mono + 0.010 - t_stop)
