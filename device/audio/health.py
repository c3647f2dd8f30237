"""How the microphone's processing fares, for `speaker status` and MQTT.

Two figures a person running the speaker on a small board wants to see without reading the log:
what share of real time processing the microphone's audio takes on this CPU (the front-end and
the wake word, :mod:`device.audio.load`), and whether the echo canceller has settled (until it has,
a reply's microphone audio is not streamed, so a person cannot talk over it). :class:`AudioHealthMonitor`
runs on the loop: the capture hands it each window's load, the daemon each frame, and it publishes
:class:`~device.events.AudioHealth` on the bus when something changed enough to tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from device import events as ev
from device.audio.load import describe as describe_load

__all__ = ["AudioHealthMonitor", "describe"]

REPORT_CHANGE = 0.05  # a load this far (of real time) from the last one told is told
REPORT_EVERY_S = 300.0  # ... and any load at least this often
SHOWN_FROM = 0.005  # stages that take less are left out


def describe(processing: float | None, stages: Sequence[tuple[str, float]], echo: str,
             echo_delay_ms: float | None, cores: int = 2) -> str:
    """One line for people, e.g. ``processing takes 9 % of real time (echo cancellation 9 %, wake
    word 3 %, side by side); echo canceller settled (the echo 32 ms after the reference)``."""
    if processing is None:
        load = "processing not measured yet"
    else:
        names, shares = zip(*stages) if stages else ((), ())
        load = f"processing takes {describe_load(processing, names, shares, cores)}"
    if echo == "off":
        return f"{load}; no echo cancellation"
    where = f" (the echo {echo_delay_ms:.0f} ms after the reference)" if echo_delay_ms is not None else ""
    state = "settled" if echo == "settled" else "learning the room: replies cannot be talked over yet"
    return f"{load}; echo canceller {state}{where}"


class AudioHealthMonitor:
    """Hands :class:`~device.events.AudioHealth` to ``publish`` (call everything on the loop).

    ``frontend`` is the microphone's front-end (None: none); its echo canceller's state is looked at
    as each frame arrives (:meth:`on_frame`), the load comes from the capture (:meth:`on_load`).
    """

    def __init__(self, publish: Callable[[ev.Event], None], frontend: object | None = None, cores: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._publish = publish
        self._frontend = frontend
        self._cores = cores
        self._clock = clock
        self._echo = "learning" if getattr(frontend, "echo_cancellation", False) else "off"
        self._processing: float | None = None
        self._stages: tuple[tuple[str, float], ...] = ()
        self._told: float | None = None  # the load last told
        self._told_at = 0.0
        self.last: ev.AudioHealth | None = None

    def on_load(self, share: float, stages: Sequence[tuple[str, float]]) -> None:
        """A window's load: ``share`` of real time, and each stage's."""
        self._processing = share
        self._stages = tuple((name, s) for name, s in stages if s >= SHOWN_FROM)
        if (self._told is None or abs(share - self._told) >= REPORT_CHANGE
                or self._clock() - self._told_at >= REPORT_EVERY_S):
            self._tell()

    def on_frame(self, frame: object) -> None:
        """A frame reached the loop: has the echo canceller settled, or started learning again?"""
        if self._echo == "off":
            return
        # (the canceller's own state: a reply's audio held back for a moment, after an underrun, is not learning)
        learnt = getattr(self._frontend, "echo_learnt", None)
        echo = "settled" if (learnt if learnt is not None else getattr(frame, "echo_settled", True)) else "learning"
        if echo != self._echo:
            self._echo = echo
            self._tell()

    def _tell(self) -> None:
        delay = getattr(self._frontend, "echo_lag_ms", None) if self._echo != "off" else None
        self.last = ev.AudioHealth(
            processing=self._processing, stages=self._stages, echo=self._echo, echo_delay_ms=delay,
            summary=describe(self._processing, self._stages, self._echo, delay, self._cores))
        self._told, self._told_at = self._processing, self._clock()
        self._publish(self.last)
