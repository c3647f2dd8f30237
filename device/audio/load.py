"""Does this CPU keep up with the microphone? The capture thread's processing, per stage, against real time.

Every microphone frame is processed in the capture thread before anyone sees it: the front-end
(echo cancellation, noise suppression, gain) and the wake word's inference. On a slow board
(a Raspberry Pi 3 or Zero 2 W with echo cancellation on) that may take most of the frame's own
duration; past all of it the card's buffer fills and audio is lost. :class:`ProcessingLoad` adds up
the thread's CPU time per stage over a window of audio and says, in the log, when the share
passes :data:`WARN_SHARE` (before audio is lost, and naming which stage costs what) and when it
is back under :data:`CALM_SHARE`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_LOG = logging.getLogger(__name__)

WINDOW_S = 10.0  # audio over which the share is measured
WARN_SHARE = 0.8  # of real time: said once the window's processing took this much
CALM_SHARE = 0.6  # ... and said again once it is back under this
REPEAT_S = 600.0  # a lasting overload is said again at most this often


class ProcessingLoad:
    """CPU seconds per audio second of each stage of the capture thread's processing.

    ``stages`` names the stages in the order :meth:`frame` gets their times. Call :meth:`frame`
    from the capture thread once per frame; it logs, and keeps :attr:`share` (the last window's
    share of real time, all stages) and :attr:`stage_shares`.
    """

    def __init__(self, device: str, stages: tuple[str, ...], advice: str = "",
                 window_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.stages = stages
        self.advice = advice
        self.window_s = WINDOW_S if window_s is None else window_s
        self._clock = clock
        self._audio_s = 0.0
        self._cpu = [0.0] * len(stages)
        self.share: float | None = None
        self.stage_shares: tuple[float, ...] = ()
        self.warnings = 0
        self._loaded = False  # the last warning has not been taken back
        self._said_at: float | None = None

    def frame(self, audio_s: float, cpu_s: tuple[float, ...]) -> None:
        """One frame of ``audio_s`` seconds took ``cpu_s`` CPU seconds in each stage."""
        self._audio_s += audio_s
        for i, s in enumerate(cpu_s):
            self._cpu[i] += s
        if self._audio_s < self.window_s - 1e-6:
            return
        shares = tuple(c / self._audio_s for c in self._cpu)
        self._audio_s, self._cpu = 0.0, [0.0] * len(self.stages)
        self.stage_shares, self.share = shares, sum(shares)
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
        """The last window, e.g. ``82 % of real time (echo cancellation 61 %, wake word 21 %)``."""
        if self.share is None:
            return "not measured yet"
        parts = ", ".join(f"{name} {s * 100:.0f} %" for name, s in zip(self.stages, self.stage_shares, strict=True)
                          if s >= 0.005)
        return f"{self.share * 100:.0f} % of real time" + (f" ({parts})" if parts else "")
