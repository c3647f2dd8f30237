"""Status LEDs follow the assistant's state: single LEDs, an RGB LED (PWM) and the APA102 ring."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin, MockSPIDevice

from device.config import ConfigError, LedsConfig
from device.events import EventBus, State, StateChanged
from device.leds import BREATHE_LOW, BREATHE_S, PULSE_S, StatusLeds, apa102_frame, pattern_for

SINGLE_PINS = {"listening": 5, "thinking": 6, "speaking": 13, "muted": 19, "error": 26}


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def pwm_factory() -> Iterator[MockFactory]:
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def publish(bus: EventBus, old: State, new: State) -> None:
    bus.publish(StateChanged(old=old, new=new))


def series(pin: Any, seconds: float) -> list[tuple[float, float]]:
    """(time, value) of every change of a mock pin over the next ``seconds``."""
    pin.clear_states()
    time.sleep(seconds)
    t, out = 0.0, []
    for st in list(pin.states):
        t += st.timestamp
        out.append((t, float(st.state)))
    return out


def peak_times(points: list[tuple[float, float]], top: float, tol: float = 0.02) -> list[float]:
    """Times at which the value rises to ``top`` (start of each plateau)."""
    times, at_top = [], False
    for t, v in points:
        if abs(v - top) <= tol and not at_top:
            times.append(t)
        at_top = abs(v - top) <= tol
    return times


# -- single LEDs ---------------------------------------------------------------------------


async def test_single_leds_light_the_pin_of_each_state(factory: MockFactory) -> None:
    bus = EventBus()
    leds = StatusLeds(LedsConfig(kind="single", pins=SINGLE_PINS), bus, pin_factory=factory)
    leds.start()
    pins = {name: factory.pin(p) for name, p in SINGLE_PINS.items()}
    try:
        assert not any(p.state for p in pins.values())  # idle: off
        for state, lit in [
            (State.LISTENING, "listening"),
            (State.FOLLOW_UP, "listening"),  # no pin of its own: the listening LED
            (State.MUTED, "muted"),
        ]:
            publish(bus, State.IDLE, state)
            assert {n for n, p in pins.items() if p.state} == {lit}, state
        publish(bus, State.MUTED, State.ERROR)  # no PWM on plain mock pins: blinking instead
        values = {v for _, v in series(pins["error"], 0.8)}
        assert values == {0.0, 1.0}
        assert not any(p.state for n, p in pins.items() if n != "error")
        publish(bus, State.ERROR, State.IDLE)
        await asyncio.sleep(0.05)
        assert not any(p.state for p in pins.values())
    finally:
        leds.close()


def test_single_leds_active_low_and_idle_dim(pwm_factory: MockFactory) -> None:
    cfg = LedsConfig(kind="single", pins={"idle": 4, "muted": 19}, active_high=False, idle="dim")
    leds = StatusLeds(cfg, None, pin_factory=pwm_factory)
    leds.start(initial=State.MUTED)
    idle, muted = pwm_factory.pin(4), pwm_factory.pin(19)
    try:
        assert muted.state == 0.0 and idle.state == 1.0  # active low: on = pin low
        leds.show(State.IDLE)
        assert muted.state == 1.0
        assert idle.state == pytest.approx(1 - 0.08)  # dim
    finally:
        leds.close()


def test_single_pwm_led_pulses_while_thinking(pwm_factory: MockFactory) -> None:
    leds = StatusLeds(LedsConfig(kind="single", pins=SINGLE_PINS), None, pin_factory=pwm_factory)
    leds.start(initial=State.THINKING)
    try:
        points = series(pwm_factory.pin(SINGLE_PINS["thinking"]), 2.0)
        values = [v for _, v in points]
        assert min(values) < 0.1 and max(values) > 0.95
        assert len({round(v, 2) for v in values}) >= 8  # a fade, not a blink
        peaks = peak_times(points, 1.0)
        periods = [b - a for a, b in zip(peaks, peaks[1:])]
        assert periods and all(0.75 * 2 * PULSE_S <= p <= 1.5 * 2 * PULSE_S for p in periods), periods
    finally:
        leds.close()


# -- RGB LED -------------------------------------------------------------------------------

RGB = LedsConfig(kind="rgb", red_pin=17, green_pin=27, blue_pin=22, brightness=40)


def rgb_values(f: MockFactory) -> tuple[float, float, float]:
    return (f.pin(17).state, f.pin(27).state, f.pin(22).state)


async def test_rgb_led_colour_of_each_static_state(pwm_factory: MockFactory) -> None:
    bus = EventBus()
    leds = StatusLeds(RGB, bus, pin_factory=pwm_factory)
    leds.start()
    try:
        assert rgb_values(pwm_factory) == (0, 0, 0)
        publish(bus, State.IDLE, State.MUTED)
        assert rgb_values(pwm_factory) == pytest.approx((0.4, 0, 0))  # red at 40 % brightness
        publish(bus, State.MUTED, State.LISTENING)
        assert rgb_values(pwm_factory) == pytest.approx((0, 0, 0.4))
        publish(bus, State.LISTENING, State.FOLLOW_UP)
        assert rgb_values(pwm_factory) == pytest.approx((0, 0, 0.2))
        publish(bus, State.FOLLOW_UP, State.IDLE)
        assert rgb_values(pwm_factory) == (0, 0, 0)
    finally:
        leds.close()


def test_rgb_led_active_low_inverts(pwm_factory: MockFactory) -> None:
    cfg = LedsConfig(kind="rgb", red_pin=17, green_pin=27, blue_pin=22, brightness=100, active_high=False)
    leds = StatusLeds(cfg, None, pin_factory=pwm_factory)
    leds.start(initial=State.MUTED)
    try:
        assert rgb_values(pwm_factory) == pytest.approx((0.0, 1.0, 1.0))
    finally:
        leds.close()


def test_rgb_thinking_pulses_and_speaking_breathes(pwm_factory: MockFactory) -> None:
    leds = StatusLeds(RGB, None, pin_factory=pwm_factory)
    leds.start(initial=State.THINKING)
    try:
        blue = series(pwm_factory.pin(22), 2.0)
        values = [v for _, v in blue]
        assert min(values) < 0.02 and max(values) == pytest.approx(0.4, abs=0.01)
        peaks = peak_times(blue, 0.4)
        periods = [b - a for a, b in zip(peaks, peaks[1:])]
        assert periods and all(0.75 * 2 * PULSE_S <= p <= 1.5 * 2 * PULSE_S for p in periods), periods
        assert pwm_factory.pin(17).state == 0.0  # no red in it

        leds.show(State.SPEAKING)
        blue = series(pwm_factory.pin(22), 2 * BREATHE_S + 0.6)
        values = [v for _, v in blue[1:]]
        assert max(values) == pytest.approx(0.4, abs=0.01)
        assert min(values) == pytest.approx(0.4 * BREATHE_LOW, abs=0.02)  # never dark
        # slow: at 25 steps a second, a full breath has ~2 * 25 * BREATHE_S distinct steps
        peaks = peak_times(blue, 0.4)
        assert len(peaks) <= 2
        if len(peaks) == 2:
            assert peaks[1] - peaks[0] >= 0.75 * 2 * BREATHE_S
    finally:
        leds.close()


def test_rgb_error_blinks(pwm_factory: MockFactory) -> None:
    leds = StatusLeds(RGB, None, pin_factory=pwm_factory)
    leds.start(initial=State.ERROR)
    try:
        red = series(pwm_factory.pin(17), 1.2)
        assert {round(v, 2) for _, v in red} <= {0.0, 0.4}
        ons = peak_times(red, 0.4)
        assert 3 <= len(ons) <= 4  # on/off every 0.25 s
    finally:
        leds.close()


# -- APA102 ring -------------------------------------------------------------------------


class RingRecorder(MockSPIDevice):
    """The LED ring's side of the SPI bus: records each transfer as bytes."""

    rx_buf: list[bool]

    def __init__(self, factory: MockFactory, select_pin: int = 7) -> None:
        super().__init__(11, 10, None, select_pin, pin_factory=factory)
        self.frames: list[bytes] = []

    def on_select(self) -> None:
        if self.select_pin.state == self.select_high:
            self.on_start()
        elif self.rx_buf:
            bits, self.rx_buf = self.rx_buf, []
            self.frames.append(bytes(int("".join("1" if b else "0" for b in bits[i : i + 8]), 2) for i in range(0, len(bits), 8)))


@pytest.fixture
def ring(factory: MockFactory, monkeypatch: pytest.MonkeyPatch) -> RingRecorder:
    # gpiozero's software SPI bus takes its pins from the default factory
    monkeypatch.setattr(Device, "pin_factory", factory)
    return RingRecorder(factory)


def pixel(frame: bytes, i: int) -> tuple[int, int, int, int]:
    """(brightness byte, r, g, b) of LED i."""
    b0, b, g, r = frame[4 + 4 * i : 8 + 4 * i]
    return b0, r, g, b


async def wait_frames(ring: RingRecorder, n: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while len(ring.frames) < n:
        assert time.monotonic() < deadline, f"only {len(ring.frames)} frames"
        await asyncio.sleep(0.005)


def test_apa102_frame_format() -> None:
    frame = apa102_frame([(255, 0, 0), (1, 2, 3)], 12)
    assert frame == bytes.fromhex("00000000" "ec0000ff" "ec030201" "00000000")
    assert len(apa102_frame([(0, 0, 0)] * 12, 31)) == 4 + 48 + 4
    long = apa102_frame([(0, 0, 0)] * 255, 31)
    assert long[-16:] == b"\x00" * 16 and len(long) == 4 + 4 * 255 + 16  # >= half a clock per LED


async def test_ring_shows_muted_red_as_apa102_bytes(factory: MockFactory, ring: RingRecorder) -> None:
    bus = EventBus()
    leds = StatusLeds(LedsConfig(kind="apa102", count=3, brightness=40), bus, pin_factory=factory)
    leds.start()
    try:
        await wait_frames(ring, 1)
        assert ring.frames[-1] == bytes.fromhex("00000000" + "ec000000" * 3 + "00000000")  # idle: off
        publish(bus, State.IDLE, State.MUTED)
        await wait_frames(ring, 2)
        # 40 % of 31 = 12 -> 0xE0|12; then B, G, R
        assert ring.frames[-1] == bytes.fromhex("00000000" + "ec0000ff" * 3 + "00000000")
        publish(bus, State.MUTED, State.LISTENING)
        await wait_frames(ring, 3)
        assert all(pixel(ring.frames[-1], i) == (0xEC, 0, 0, 255) for i in range(3))
    finally:
        leds.close()
    assert ring.frames[-1] == bytes.fromhex("00000000" + "e0000000" * 3 + "00000000")  # dark on close


async def test_ring_animates_thinking_and_stops_writing_when_idle(factory: MockFactory, ring: RingRecorder) -> None:
    bus = EventBus()
    leds = StatusLeds(LedsConfig(kind="apa102", count=3, brightness=100, idle="off"), bus, pin_factory=factory)
    leds.start()
    try:
        await wait_frames(ring, 1)
        publish(bus, State.IDLE, State.THINKING)
        start = len(ring.frames)
        await asyncio.sleep(1.6)
        frames = ring.frames[start:]
        blue = [pixel(f, 0)[3] for f in frames]
        assert len(frames) >= 15  # ~30 fps, with slack for a busy machine
        assert min(blue) < 40 and max(blue) > 215  # full-depth pulse
        assert all(pixel(f, 0)[1] == 0 for f in frames)  # no red
        ups = sum(1 for a, b in zip(blue, blue[1:]) if b > a)
        downs = sum(1 for a, b in zip(blue, blue[1:]) if b < a)
        assert ups >= 4 and downs >= 4  # it fades both ways

        publish(bus, State.THINKING, State.IDLE)
        await asyncio.sleep(0.1)
        assert ring.frames[-1] == bytes.fromhex("00000000" + "ff000000" * 3 + "00000000")
        count = len(ring.frames)
        await asyncio.sleep(0.4)
        assert len(ring.frames) == count  # idle-off: nothing is animated, nothing written
        thread = getattr(leds._driver, "_thread", None)
        assert thread is not None and thread.is_alive()  # ... the animator sleeps on an event
    finally:
        leds.close()


async def test_ring_speaking_breathes_and_idle_dim(factory: MockFactory, ring: RingRecorder) -> None:
    leds = StatusLeds(LedsConfig(kind="apa102", count=12, brightness=100, idle="dim"), None, pin_factory=factory)
    leds.start(initial=State.SPEAKING)
    try:
        await asyncio.sleep(2 * BREATHE_S + 0.3)
        blue = [pixel(f, 11)[3] for f in ring.frames[1:]]
        assert max(blue) > 240
        assert min(blue) >= round(255 * BREATHE_LOW) - 2 and min(blue) < 255 * BREATHE_LOW + 15  # never dark
        leds.show(State.IDLE)
        await asyncio.sleep(0.1)
        r, g, b = pixel(ring.frames[-1], 0)[1:]
        assert r == g == b and 0 < r < 40  # dim white
    finally:
        leds.close()


async def test_ring_power_pin_of_the_4mic_hat(factory: MockFactory, ring: RingRecorder) -> None:
    leds = StatusLeds(LedsConfig(kind="apa102", count=12, power_pin=5), None, pin_factory=factory)
    leds.start(initial=State.MUTED)
    try:
        assert factory.pin(5).state is True
        await wait_frames(ring, 1)
        assert len(ring.frames[-1]) == 4 + 48 + 4
        assert pixel(ring.frames[-1], 11)[1:] == (255, 0, 0)
    finally:
        leds.close()
    assert factory.pin(5).state is False


def test_probe_describes_the_ring_without_touching_it(factory: MockFactory, ring: RingRecorder) -> None:
    text = StatusLeds(LedsConfig(kind="apa102", count=12, spi_device=1), None, pin_factory=factory).probe()
    assert text == "APA102 ring x12 on SPI0.1"
    assert ring.frames == []  # a running daemon's ring keeps its colour during `speaker check`


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (LedsConfig(kind="single"), "leds.pins"),
        (LedsConfig(kind="single", pins={"sleeping": 5}), "leds.pins.sleeping"),
        (LedsConfig(kind="single", pins={"muted": 99}), "leds.pins.muted"),
        (LedsConfig(kind="rgb", red_pin=1, green_pin=2), "leds.blue_pin"),
    ],
)
def test_inconsistent_led_config_names_the_key(cfg: LedsConfig, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        StatusLeds(cfg, None)


def test_no_leds_configured_is_a_no_op() -> None:
    leds = StatusLeds(LedsConfig(), EventBus())
    leds.start()  # touches no GPIO (there is none on a test machine)
    leds.show(State.MUTED)
    leds.close()


def test_every_state_has_a_pattern_as_specified() -> None:
    assert pattern_for(State.IDLE).kind == "off"
    assert pattern_for(State.IDLE, "dim").kind == "solid" and pattern_for(State.IDLE, "dim").level < 0.2
    assert pattern_for(State.LISTENING).kind == "solid"
    assert pattern_for(State.THINKING).kind == "pulse"
    assert pattern_for(State.SPEAKING).kind == "breathe"
    assert pattern_for(State.MUTED).kind == "solid" and pattern_for(State.MUTED).color == (1.0, 0.0, 0.0)
    assert pattern_for(State.ERROR).kind == "blink"
    ringing = pattern_for(State.RINGING)
    assert ringing.kind == "flash" and ringing not in [pattern_for(s) for s in State if s is not State.RINGING]
