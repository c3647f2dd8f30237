"""How the microphone's processing fares, as `speaker status` and Home Assistant show it: the CPU
share it takes, and whether the echo canceller has settled (device/audio/health.py)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from device import events as ev
from device.audio.health import REPORT_EVERY_S, AudioHealthMonitor
from device.status_file import describe as describe_status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def monitor(echo: bool = True, lag_ms: float | None = None) -> tuple[AudioHealthMonitor, list[ev.AudioHealth], Clock, SimpleNamespace]:
    told: list[ev.AudioHealth] = []
    clock = Clock()
    frontend = SimpleNamespace(echo_cancellation=echo, echo_lag_ms=lag_ms)
    return AudioHealthMonitor(told.append, frontend if echo else None, cores=4, clock=clock), told, clock, frontend


def frame(settled: bool) -> SimpleNamespace:
    return SimpleNamespace(echo_settled=settled)


def test_the_load_is_told_when_it_changes_not_on_every_window() -> None:
    m, told, clock, _ = monitor(echo=False)
    m.on_load(0.031, (("high-pass filter", 0.0), ("wake word", 0.031)))
    assert len(told) == 1
    assert told[0].processing == 0.031 and told[0].stages == (("wake word", 0.031),)
    assert told[0].summary == "processing takes 3 % of real time (wake word 3 %); no echo cancellation"
    for share in (0.035, 0.05, 0.027):  # windows that differ by less than 5 points: nothing new to tell
        clock.now += 10
        m.on_load(share, (("high-pass filter", 0.0), ("wake word", share)))
    assert len(told) == 1
    clock.now += 10
    m.on_load(0.12, (("high-pass filter", 0.0), ("wake word", 0.12)))
    assert len(told) == 2 and told[1].processing == 0.12
    # A steady load is told again now and then (a display that shows it stays fresh).
    clock.now += REPORT_EVERY_S
    m.on_load(0.121, (("high-pass filter", 0.0), ("wake word", 0.121)))
    assert len(told) == 3


def test_the_echo_canceller_settling_and_learning_again_is_told_at_once() -> None:
    m, told, _, frontend = monitor(echo=True)
    m.on_frame(frame(False))  # cold: learning, as it started
    assert not told
    m.on_load(0.092, (("echo cancellation", 0.092), ("wake word", 0.031)))
    assert told[-1].echo == "learning" and told[-1].echo_delay_ms is None
    assert told[-1].summary == ("processing takes 9 % of real time (echo cancellation 9 %, wake word 3 %, side by side); "
                                "echo canceller learning the room: replies cannot be talked over yet")
    frontend.echo_lag_ms = 32.0
    m.on_frame(frame(True))
    assert len(told) == 2 and told[-1].echo == "settled" and told[-1].echo_delay_ms == 32.0
    assert told[-1].summary.endswith("; echo canceller settled (the echo 32 ms after the reference)")
    m.on_frame(frame(True))
    assert len(told) == 2
    m.on_frame(frame(False))  # the speaker was moved: it learns the room again
    assert len(told) == 3 and told[-1].echo == "learning"


def test_before_any_window_the_echo_state_is_told_without_a_load() -> None:
    m, told, _, _ = monitor(echo=True, lag_ms=30.0)
    m.on_frame(frame(True))
    assert told[-1].processing is None
    assert told[-1].summary == "processing not measured yet; echo canceller settled (the echo 30 ms after the reference)"


def test_speaker_status_shows_the_microphone_line() -> None:
    now = time.monotonic()
    data = {"pid": os.getpid(), "state": "idle", "state_since_monotonic": now, "started_monotonic": now,
            "conversations": 0, "errors": 0,
            "audio": {"processing": 0.092, "echo_canceller": "settled", "echo_delay_ms": 32.0,
                      "summary": "processing takes 9 % of real time (echo cancellation 9 %, wake word 3 %, side by side); "
                                 "echo canceller settled (the echo 32 ms after the reference)"}}
    running, lines = describe_status(data, now=now)
    assert running
    assert lines[-1] == ("microphone:        processing takes 9 % of real time (echo cancellation 9 %, wake word 3 %, "
                         "side by side); echo canceller settled (the echo 32 ms after the reference)")
    data["state"] = "stopped"
    assert not any(line.startswith("microphone:") for line in describe_status(data, now=now)[1])  # stale once stopped
