"""Does the CPU keep up with the microphone? The capture thread's processing against real time,
said in the log before audio is lost, with the stage that costs it (device/audio/load.py)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from device.audio import load as load_mod
from device.audio.capture import AudioFrame, Capture
from device.audio.load import ProcessingLoad
from device.config import AudioConfig


def burn(cpu_s: float) -> None:
    """Take ``cpu_s`` of this thread's CPU time, as a slow board's echo canceller would."""
    t0 = time.thread_time()
    while time.thread_time() - t0 < cpu_s:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(load: ProcessingLoad, clock: Clock, seconds: float, cpu: tuple[float, ...]) -> None:
    """``seconds`` of 80 ms frames, each costing ``cpu`` (per stage, CPU seconds)."""
    for _ in range(round(seconds / 0.08)):
        clock.now += 0.08
        load.frame(0.08, cpu)


def test_an_overload_is_said_once_with_each_stage_and_taken_back(caplog) -> None:
    clock = Clock()
    load = ProcessingLoad("mic", ("echo cancellation", "wake word"), advice="; turn it off", window_s=2.0, clock=clock, cores=1)
    with caplog.at_level(logging.INFO, logger="device.audio.load"):
        feed(load, clock, 4.0, (0.02, 0.01))  # 38 %: nothing to say
        assert load.share == pytest.approx(0.375) and not caplog.records
        feed(load, clock, 10.0, (0.056, 0.015))  # 89 %, window after window
        feed(load, clock, 2.0, (0.04, 0.01))  # 62 %: still loaded, not yet calm
        feed(load, clock, 2.0, (0.02, 0.012))  # back to 40 %
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0] == ("microphone 'mic': processing its audio takes 89 % of real time (echo cancellation 70 %, "
                       "wake word 19 %, on one core): this CPU barely keeps up, and past 100 % audio is lost; turn it off")
    assert caplog.records[0].levelno == logging.WARNING
    assert said[1] == "microphone 'mic': processing its audio is back to 40 % of real time (echo cancellation 25 %, wake word 15 %, on one core)"


def test_a_lasting_overload_is_said_again_every_ten_minutes(caplog) -> None:
    clock = Clock()
    load = ProcessingLoad("mic", ("front-end", "wake word"), clock=clock)
    with caplog.at_level(logging.WARNING, logger="device.audio.load"):
        feed(load, clock, 1200.0, (0.0, 0.071))
    assert load.warnings == 2 and len(caplog.records) == 2
    # A stage that costs nothing (no front-end configured) is left out of the figures.
    assert "(wake word 89 %)" in caplog.records[0].getMessage() and "front-end" not in caplog.records[0].getMessage()


def test_stages_side_by_side_are_limited_by_the_busier() -> None:
    """On two cores or more the front-end and the wake word run at once: neither may take a whole
    frame's time, but together they may take more than one core's."""
    clock = Clock()
    two = ProcessingLoad("mic", ("echo cancellation", "wake word"), window_s=2.0, clock=clock, cores=4)
    one = ProcessingLoad("mic", ("echo cancellation", "wake word"), window_s=2.0, clock=clock, cores=1)
    for load in (two, one):
        feed(load, clock, 2.0, (0.048, 0.032))  # 60 % and 40 %
    assert two.share == pytest.approx(0.6) and two.warnings == 0
    assert one.share == pytest.approx(1.0) and one.warnings == 1
    feed(two, clock, 2.0, (0.068, 0.004))  # the front-end alone takes 85 %
    assert two.share == pytest.approx(0.85) and two.warnings == 1
    assert two.describe() == "85 % of real time (echo cancellation 85 %, wake word 5 %, side by side)"


async def _capture_with(alsa_rig, frontend_cpu_s: float) -> Capture:
    """Capture the rig's microphone for 1.5 s with a front-end that costs ``frontend_cpu_s`` per frame."""

    class SlowFrontEnd:
        label = "echo cancellation"
        advice = "; its part goes with audio.echo_cancellation = false"

        def process(self, frame: AudioFrame) -> AudioFrame:
            burn(frontend_cpu_s)
            return frame

        def reset(self) -> None:
            pass

    alsa_rig.start_mic("test_mic")
    frames: list[AudioFrame] = []
    cap = Capture(AudioConfig(input="test_mic"), frames.append, asyncio.get_running_loop())
    cap.frontend = SlowFrontEnd()
    cap.analyze = lambda f: (burn(0.004), f)[1]
    cap.start()
    try:
        deadline = time.monotonic() + 10
        while cap.load is None or cap.load.share is None:
            assert time.monotonic() < deadline, f"no window measured ({len(frames)} frames)"
            await asyncio.sleep(0.1)
    finally:
        cap.stop()
    return cap


@pytest.mark.timeout(30)
async def test_a_front_end_the_cpu_barely_keeps_up_with_is_named_in_the_log(alsa_rig, caplog, monkeypatch) -> None:
    monkeypatch.setattr(load_mod, "WINDOW_S", 1.0)
    with caplog.at_level(logging.WARNING, logger="device.audio.load"):
        cap = await _capture_with(alsa_rig, 0.066)
    said = [r.getMessage() for r in caplog.records]
    assert cap.load is not None and cap.load.share is not None and cap.load.share >= load_mod.WARN_SHARE
    assert len(said) == 1 and "microphone 'test_mic': processing its audio takes" in said[0], said
    assert "(echo cancellation 8" in said[0] and "wake word 5 %" in said[0]
    # The wake word's time is counted apart from the front-end's (its own thread's CPU time).
    assert cap.load.stage_shares[1] == pytest.approx(0.05, abs=0.01)
    assert said[0].endswith("its part goes with audio.echo_cancellation = false")


@pytest.mark.timeout(30)
async def test_a_front_end_the_cpu_keeps_up_with_is_not_warned_about(alsa_rig, caplog, monkeypatch) -> None:
    monkeypatch.setattr(load_mod, "WINDOW_S", 1.0)
    with caplog.at_level(logging.WARNING, logger="device.audio.load"):
        cap = await _capture_with(alsa_rig, 0.03)
    assert cap.load is not None and cap.load.share is not None and 0.3 < cap.load.share < 0.6
    assert not caplog.records
