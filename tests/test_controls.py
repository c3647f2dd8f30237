"""Buttons through gpiozero's MockFactory: press sequences drive the ControlActions."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory, MockPin

from device import controls as controls_mod
from device import gpio as gpio_mod
from device.config import GpioConfig, LedsConfig
from device.controls import Controls, GpioUnavailable, probe_gpio, resolve_pin_factory

MUTE, TALK = 17, 27


class FakeActions:
    """Records what the buttons asked for, and in which thread the request was made."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, tuple[Any, ...]]] = []
        self.threads: set[int] = set()
        self.muted = False

    def _note(self, name: str, *args: Any) -> None:
        self.calls.append((time.monotonic(), name, args))
        self.threads.add(threading.get_ident())

    def names(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(name, args) for _, name, args in self.calls]

    def set_muted(self, muted: bool, source: str) -> Coroutine[Any, Any, None]:
        self._note("set_muted", muted, source)

        async def run() -> None:
            self.muted = muted

        return run()

    def toggle_mute(self, source: str) -> Coroutine[Any, Any, None]:
        self._note("toggle_mute", source)

        async def run() -> None:
            self.muted = not self.muted

        return run()

    ringing = False  # a timer rings: the next press of either button stops it

    def stop_ringing(self, source: str) -> bool:
        self._note("stop_ringing", source)
        was, self.ringing = self.ringing, False
        return was

    def talk_down(self) -> Coroutine[Any, Any, None]:
        self._note("talk_down")
        return asyncio.sleep(0)

    def talk_up(self) -> Coroutine[Any, Any, None]:
        self._note("talk_up")
        return asyncio.sleep(0)

    def talk_pressed(self) -> Coroutine[Any, Any, None]:
        self._note("talk_pressed")

        async def run() -> None:
            pass

        return run()


class ClosedSwitchPin(MockPin):
    """A pin wired to a switch that is closed when the pin is set up."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self._change_state(False)


async def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def actions() -> FakeActions:
    return FakeActions()


def make(cfg: GpioConfig, actions: FakeActions, factory: MockFactory) -> Controls:
    c = Controls(cfg, actions, asyncio.get_running_loop(), pin_factory=factory)
    c.start()
    return c


async def press(pin: Any, hold: float = 0.08, gap: float = 0.08) -> None:
    pin.drive_low()
    await asyncio.sleep(hold)
    pin.drive_high()
    await asyncio.sleep(gap)


async def test_mute_button_toggles_on_each_press(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, bounce_ms=20), actions, factory)
    try:
        pin = factory.pin(MUTE)
        assert pin.bounce == pytest.approx(0.02)  # gpiozero's debounce gets the configured time too
        for _ in range(3):
            await press(pin)
        await asyncio.sleep(0.05)
        assert actions.names() == [("toggle_mute", ("button",))] * 3
        assert actions.muted is True
    finally:
        c.close()


async def test_bouncing_contacts_count_as_one_press(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, bounce_ms=30), actions, factory)
    pin = factory.pin(MUTE)

    def bouncy_press() -> None:  # in a thread, like a real pin's callbacks
        for level in (0, 1, 0, 1, 0, 1, 0):
            pin.drive_low() if level == 0 else pin.drive_high()
            time.sleep(0.003)
        time.sleep(0.15)  # held
        for level in (1, 0, 1, 0, 1):
            pin.drive_low() if level == 0 else pin.drive_high()
            time.sleep(0.003)
        time.sleep(0.1)

    try:
        await asyncio.to_thread(bouncy_press)
        await asyncio.sleep(0.1)
        assert actions.names() == [("toggle_mute", ("button",))]
        # a blip shorter than the bounce time is noise, not a press
        pin.drive_low()
        await asyncio.sleep(0.005)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert len(actions.calls) == 1
    finally:
        c.close()


async def test_actions_are_requested_on_the_loop_thread_not_gpiozeros(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, talk_pin=TALK, bounce_ms=10), actions, factory)

    def presses() -> None:
        for p in (MUTE, TALK):
            factory.pin(p).drive_low()
            time.sleep(0.05)
            factory.pin(p).drive_high()
            time.sleep(0.05)

    try:
        worker = threading.Thread(target=presses)
        worker.start()
        await asyncio.to_thread(worker.join, 5)
        await wait_until(lambda: len(actions.calls) == 2)
        assert [n for n, _ in actions.names()] == ["toggle_mute", "talk_pressed"]
        assert actions.threads == {threading.get_ident()}
    finally:
        c.close()


async def test_latch_switch_position_is_the_state_also_at_start(factory: MockFactory, actions: FakeActions) -> None:
    # The switch is closed (muted) before the daemon starts: it holds the pin low against the pull-up.
    factory.pin(MUTE, pin_class=ClosedSwitchPin)
    c = make(GpioConfig(mute_pin=MUTE, mute_mode="latch", bounce_ms=20), actions, factory)
    pin = factory.pin(MUTE)
    try:
        await wait_until(lambda: len(actions.calls) == 1)
        assert actions.names() == [("set_muted", (True, "switch"))]
        pin.drive_high()  # switch opened
        await wait_until(lambda: len(actions.calls) == 2)
        # a bouncy close settles once
        for level in (0, 1, 0, 1, 0):
            pin.drive_low() if level == 0 else pin.drive_high()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.12)
        assert actions.names() == [
            ("set_muted", (True, "switch")),
            ("set_muted", (False, "switch")),
            ("set_muted", (True, "switch")),
        ]
        assert actions.muted is True
    finally:
        c.close()


async def test_latch_switch_open_at_start_unmutes(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, mute_mode="latch"), actions, factory)
    try:
        await wait_until(lambda: len(actions.calls) == 1)
        assert actions.names() == [("set_muted", (False, "switch"))]
    finally:
        c.close()


async def test_talk_short_press_calls_talk_pressed_on_release(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(talk_pin=TALK, bounce_ms=10, long_press_s=0.5), actions, factory)
    pin = factory.pin(TALK)
    try:
        pin.drive_low()
        await asyncio.sleep(0.15)
        assert actions.calls == []  # nothing yet: it might become a long press
        released = time.monotonic()
        pin.drive_high()
        await wait_until(lambda: len(actions.calls) == 1)
        assert actions.names() == [("talk_pressed", ())]
        assert actions.calls[0][0] - released < 0.2
        await press(pin)  # e.g. the speaker is now talking: the same call stops it
        await asyncio.sleep(0.05)
        assert actions.names() == [("talk_pressed", ())] * 2
    finally:
        c.close()


async def test_while_ringing_a_press_of_either_button_stops_it_and_does_nothing_else(
        factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, talk_pin=TALK, bounce_ms=10, long_press_s=0.3), actions, factory)
    try:
        actions.ringing = True
        await press(factory.pin(MUTE))
        await asyncio.sleep(0.05)
        assert actions.names() == [("stop_ringing", ("mute button",))] and actions.muted is False
        actions.ringing = True
        talk = factory.pin(TALK)
        talk.drive_low()
        await wait_until(lambda: len(actions.calls) == 2)  # at the press, not the release
        assert actions.names()[-1] == ("stop_ringing", ("talk button",))
        await asyncio.sleep(0.4)  # held past the long press: no mute either
        talk.drive_high()
        await asyncio.sleep(0.05)
        assert len(actions.calls) == 2
        await press(factory.pin(MUTE))  # not ringing: the mute button mutes again
        await asyncio.sleep(0.05)
        assert actions.names()[-1] == ("toggle_mute", ("button",))
    finally:
        c.close()


async def test_push_to_talk_mode_reports_down_and_up_and_never_mutes(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(talk_pin=TALK, bounce_ms=10, long_press_s=0.3, talk_mode="hold"), actions, factory)
    pin = factory.pin(TALK)
    try:
        pin.drive_low()
        await wait_until(lambda: len(actions.calls) == 1)  # at once: the turn starts with the press
        await asyncio.sleep(0.5)  # held past the long press
        pin.drive_high()
        await wait_until(lambda: len(actions.calls) == 2)
        assert actions.names() == [("talk_down", ()), ("talk_up", ())] and actions.muted is False
    finally:
        c.close()


async def test_talk_long_press_mutes_while_held_and_release_does_nothing(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(talk_pin=TALK, bounce_ms=10, long_press_s=0.3), actions, factory)
    pin = factory.pin(TALK)
    try:
        pressed = time.monotonic()
        pin.drive_low()
        await wait_until(lambda: len(actions.calls) == 1, timeout=2)
        held_after = actions.calls[0][0] - pressed
        assert actions.names() == [("set_muted", (True, "button"))]
        assert 0.28 <= held_after < 0.6
        await asyncio.sleep(0.2)
        pin.drive_high()
        await asyncio.sleep(0.1)
        assert actions.names() == [("set_muted", (True, "button"))]  # no talk_pressed after a hold
        # the next short press is a normal press again
        await press(pin, hold=0.05)
        await asyncio.sleep(0.05)
        assert actions.names()[-1] == ("talk_pressed", ())
    finally:
        c.close()


async def test_close_releases_pins_and_ignores_late_edges(factory: MockFactory, actions: FakeActions) -> None:
    c = make(GpioConfig(mute_pin=MUTE, talk_pin=TALK, bounce_ms=20), actions, factory)
    factory.pin(MUTE).drive_low()  # an edge in flight while closing
    c.close()
    await asyncio.sleep(0.1)
    assert actions.calls == []
    Button(MUTE, pin_factory=factory).close()  # the pins are free again
    Button(TALK, pin_factory=factory).close()


async def test_no_buttons_configured_needs_no_gpio(actions: FakeActions, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_factory(name: str = "") -> Any:
        raise AssertionError("no factory should be needed")

    monkeypatch.setattr(controls_mod, "resolve_pin_factory", no_factory)
    c = Controls(GpioConfig(), actions, asyncio.get_running_loop())
    assert not c.enabled
    c.start()
    c.close()
    assert probe_gpio(GpioConfig(), LedsConfig()) == "no buttons or LEDs configured"


async def test_pin_in_use_names_the_key(factory: MockFactory, actions: FakeActions) -> None:
    other = Button(MUTE, pin_factory=factory)
    try:
        with pytest.raises(GpioUnavailable, match=r"mute button on GPIO17 \('gpio.mute_pin'\)"):
            make(GpioConfig(mute_pin=MUTE, talk_pin=TALK), actions, factory)
        Button(TALK, pin_factory=factory).close()  # the talk pin was not left reserved
    finally:
        other.close()


@pytest.fixture
def clean_factory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr(gpio_mod, "_factory_cache", {})


@pytest.mark.usefixtures("clean_factory_cache")
def test_machine_without_gpio_says_so_clearly() -> None:
    try:
        resolve_pin_factory("")
    except GpioUnavailable:
        pass
    else:
        pytest.skip("this machine has GPIO")
    cfg = GpioConfig(mute_pin=MUTE)
    with pytest.raises(GpioUnavailable) as err:
        probe_gpio(cfg, LedsConfig())
    msg = str(err.value)
    assert "GPIO is configured but this machine has no usable GPIO" in msg
    for name in ("lgpio", "rpigpio", "pigpio", "native"):
        assert f"{name}:" in msg
    with pytest.raises(GpioUnavailable, match="no usable GPIO"):
        Controls(cfg, FakeActions(), asyncio.new_event_loop()).start()
    with pytest.raises(GpioUnavailable, match="no usable GPIO"):
        probe_gpio(GpioConfig(), LedsConfig(kind="rgb", red_pin=1, green_pin=2, blue_pin=3))


@pytest.mark.usefixtures("clean_factory_cache")
def test_named_factory_failure_names_the_factory() -> None:
    with pytest.raises(GpioUnavailable, match=r"'gpio.pin_factory' = 'gpiod' is not a gpiozero pin factory"):
        probe_gpio(GpioConfig(talk_pin=TALK, pin_factory="gpiod"), LedsConfig())
    try:
        import lgpio  # noqa: F401
    except ImportError:
        with pytest.raises(GpioUnavailable, match=r"pin factory 'lgpio' failed: .*lgpio"):
            probe_gpio(GpioConfig(talk_pin=TALK, pin_factory="lgpio"), LedsConfig())


@pytest.mark.usefixtures("clean_factory_cache")
def test_probe_with_the_mock_factory_describes_what_is_configured() -> None:
    leds = LedsConfig(kind="single", pins={"listening": 5, "muted": 6})
    text = probe_gpio(GpioConfig(mute_pin=MUTE, talk_pin=TALK, pin_factory="mock"), leds)
    assert text.startswith("MockFactory")
    assert "mute button GPIO17" in text and "talk button GPIO27" in text
    assert "GPIO5 (listening/follow_up)" in text and "GPIO6 (muted)" in text
    # everything was closed again: a second probe finds the pins free
    assert probe_gpio(GpioConfig(mute_pin=MUTE, mute_mode="latch", pin_factory="mock"), leds).count("GPIO") == 3


# -- mute at the capture layer -------------------------------------------------------------

FEEDER = r"""
import os, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_WRONLY)
n, next_t = 0, time.monotonic()
while True:
    n += 1
    tag = n % 32000 + 1
    try:
        os.write(fd, tag.to_bytes(2, "little", signed=True) * 1280)  # 80 ms at 16 kHz, tagged
    except BrokenPipeError:
        break
    next_t += 0.08
    time.sleep(max(0.0, next_t - time.monotonic()))
"""


@pytest.fixture
def fifo_mic(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ALSA capture PCM fed through a FIFO at real-time pace by another process."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/usr/share/alsa/alsa.conf"):
        pytest.skip("alsa-lib configuration not installed")
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    rc = tmp_path / "asound.conf"
    rc.write_text(f'pcm.h4_mic {{ type file slave.pcm "null" file "/dev/null" infile "{fifo}" format "raw" }}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{rc}")
    feeder = subprocess.Popen([sys.executable, "-c", FEEDER, str(fifo)])
    try:
        yield "h4_mic"
    finally:
        feeder.kill()
        feeder.wait(5)


@pytest.mark.timeout(60)
async def test_no_frame_passes_capture_while_muted_over_1000_random_toggles(fifo_mic: str) -> None:
    """The mute property at the capture layer's output (the whole-daemon version is the lead's)."""
    import random

    try:
        from device.audio.capture import Capture
    except ImportError as exc:
        pytest.skip(f"device.audio.capture not available: {exc}")
    from device.config import AudioConfig

    loop = asyncio.get_running_loop()
    muted = False
    delivered: list[Any] = []
    while_muted = 0
    intervals: list[tuple[float, float]] = []  # muted from, to (loop clock = time.monotonic())

    def on_frame(frame: Any) -> None:
        nonlocal while_muted
        if muted:
            while_muted += 1
        delivered.append(frame)

    capture = Capture(AudioConfig(input=fifo_mic, input_rate=16000, input_channels=1), on_frame, loop)
    capture.start()
    try:
        await wait_until(lambda: len(delivered) >= 3, timeout=10)
        rng = random.Random(5)
        before = len(delivered)
        on_since = 0.0
        count_at_mute = 0
        for i in range(1000):
            muted = not muted
            capture.muted = muted
            now = time.monotonic()
            if muted:
                on_since, count_at_mute = now, capture.frames_delivered
            else:
                intervals.append((on_since, now))
                assert capture.frames_delivered == count_at_mute, f"frames passed during mute window {len(intervals)}"
            # mostly short, sometimes long enough for frames to flow (or pile up) in between
            await asyncio.sleep(rng.uniform(0.2, 0.35) if rng.random() < 0.02 else rng.uniform(0, 0.012))
        if muted:
            capture.muted = muted = False
            intervals.append((on_since, time.monotonic()))
        during = len(delivered) - before
        resumed = len(delivered)
        await wait_until(lambda: len(delivered) >= resumed + 3, timeout=3)  # audio flows again after unmute
    finally:
        capture.stop()

    assert while_muted == 0
    assert capture.frames_delivered == len(delivered)
    # No delivered frame was read from the device while muted.
    read_while_muted = [f.t for f in delivered if any(a <= f.t <= b for a, b in intervals)]
    assert read_while_muted == []
    assert during >= 3  # frames flowed in the longer unmuted windows: the test could have failed
    overlap = [f for f in delivered if any(a < f.t - 0.08 < b or a < f.t < b for a, b in intervals)]
    print(f"mute property: {len(delivered)} frames delivered ({during} amid the toggles), {len(intervals)} mute windows, "
          f"{len(overlap)} delivered frames whose 80 ms of audio began inside a mute window")
    assert overlap == [], "audio recorded while muted reached the capture layer's output"
