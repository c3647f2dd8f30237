"""Does this CPU keep up with the microphone? The capture's processing, per stage, against real time.

Every microphone frame is processed before anyone sees it: the front-end (echo cancellation,
noise suppression, gain) in the reader thread, then the wake word's inference in the analysis
thread beside it. On a slow board (a Raspberry Pi 3 or Zero 2 W with echo cancellation on) a
stage may take most of the frame's own duration; past all of it the card's buffer fills and audio
is lost. The stages run side by side on a board with two cores or more, so what limits is the
busier stage; on one core, the sum (:func:`limiting_share`). :class:`ProcessingLoad` adds up each
stage's CPU time over a window of audio and says, in the log, when the limiting share passes
:data:`WARN_SHARE` (before audio is lost, and naming which stage costs what) and when it is back
under :data:`CALM_SHARE`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

_LOG = logging.getLogger(__name__)

WINDOW_S = 10.0  # audio over which the share is measured
WARN_SHARE = 0.8  # of real time: said once the window's processing took this much
CALM_SHARE = 0.6  # ... and said again once it is back under this
REPEAT_S = 600.0  # a lasting overload is said again at most this often


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # (not Linux)
        return max(1, os.cpu_count() or 1)


def limiting_share(shares: Sequence[float], cores: int) -> float:
    """The share of real time that limits stages run side by side, each in its own thread, on
    ``cores`` cores: the busiest stage's, or the sum spread over the cores, whichever is higher."""
    return max(max(shares, default=0.0), sum(shares) / max(1, min(cores, len(shares))))


class ProcessingLoad:
    """CPU seconds per audio second of each stage of the capture's processing.

    ``stages`` names the stages in the order :meth:`frame` gets their times, each run in its own
    thread on ``cores`` cores (default: this process's). Call :meth:`frame` from one thread, once
    per frame; it logs, and keeps :attr:`share` (the last window's limiting share of real time,
    :func:`limiting_share`) and :attr:`stage_shares`, and calls :attr:`on_measure` (in that thread)
    with the share and each stage's, once per window.
    """

    def __init__(self, device: str, stages: tuple[str, ...], advice: str = "", window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, cores: int | None = None) -> None:
        self.device = device
        self.stages = stages
        self.advice = advice
        self.window_s = WINDOW_S if window_s is None else window_s
        self.cores = cores or available_cores()
        self._clock = clock
        self._audio_s = 0.0
        self._cpu = [0.0] * len(stages)
        self.share: float | None = None
        self.stage_shares: tuple[float, ...] = ()
        self.warnings = 0
        self._loaded = False  # the last warning has not been taken back
        self._said_at: float | None = None
        self.on_measure: Callable[[float, tuple[tuple[str, float], ...]], None] | None = None

    def frame(self, audio_s: float, cpu_s: tuple[float, ...]) -> None:
        """One frame of ``audio_s`` seconds took ``cpu_s`` CPU seconds in each stage."""
        self._audio_s += audio_s
        for i, s in enumerate(cpu_s):
            self._cpu[i] += s
        if self._audio_s < self.window_s - 1e-6:
            return
        shares = tuple(c / self._audio_s for c in self._cpu)
        self._audio_s, self._cpu = 0.0, [0.0] * len(self.stages)
        self.stage_shares, self.share = shares, limiting_share(shares, self.cores)
        if self.on_measure is not None:
            self.on_measure(self.share, tuple(zip(self.stages, shares, strict=True)))
        now = self._clock()
        if self.share >= WARN_SHARE:
            if not self._loaded or self._said_at is None or now - self._said_at >= REPEAT_S:
                self._loaded, self._said_at = True, now
                self.warnings += 1
                _LOG.warning("microphone '%s': processing its audio takes %s: this CPU barely keeps up, and "
                             "past 100 %% audio is lost%s", self.device, self.describe(), self.advice)
        elif self._loaded and self.share < CALM_SHARE:
            self._loaded = False
            _LOG.info("microphone '%s': processing its audio is back to %s", self.device, self.describe())

    def describe(self) -> str:
        """The last window, e.g. ``82 % of real time (echo cancellation 82 %, wake word 21 %, side by side)``."""
        if self.share is None:
            return "not measured yet"
        return describe(self.share, self.stages, self.stage_shares, self.cores)


def describe(share: float, stages: Sequence[str], shares: Sequence[float], cores: int) -> str:
    """``share`` of real time, with each stage's (those that cost anything) and how they run."""
    parts = [f"{name} {s * 100:.0f} %" for name, s in zip(stages, shares, strict=True) if s >= 0.005]
    if len(parts) > 1:
        parts.append("side by side" if cores > 1 else "on one core")
    return f"{share * 100:.0f} % of real time" + (f" ({', '.join(parts)})" if parts else "")
