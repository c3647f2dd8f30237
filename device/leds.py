"""Status LEDs that follow the assistant's state (StateChanged events on the bus).

Three kinds of hardware:

- ``single``: one LED per state (``pins = {listening = 5, muted = 6}``); PWM where the pin
  factory supports it (pulsing and breathing), plain on/off blinking where it does not.
- ``rgb``: one RGB LED on three PWM pins.
- ``apa102``: the APA102 ring of the ReSpeaker 2-Mic/4-Mic HATs on SPI0.

Patterns: idle off (or dim), listening solid, follow-up solid at half, thinking pulsing, speaking
breathing, muted solid red, error blinking. gpiozero animates the PWM LEDs in its own threads; the
ring has a small animator thread of its own that sleeps without a timeout while the pattern is
static, so an idle speaker spends nothing on its lights. The event loop never waits for SPI.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .config import ConfigError, LedsConfig
from .events import EventBus, State, StateChanged

if TYPE_CHECKING:
    from gpiozero.pins import Factory

_LOG = logging.getLogger(__name__)

Color = tuple[float, float, float]

# Timings of the animated patterns, in seconds.
PULSE_S = 0.4  # thinking: fade in, then out, full depth
BREATHE_S = 1.2  # speaking: slow fade in, then out ...
BREATHE_LOW = 0.2  # ... never quite dark
BLINK_S = 0.25  # error: on, then off
FLASH_S = 0.1  # ringing: fast bright flashes, unlike any other state
DIM = 0.08  # idle = "dim"
RING_FPS = 30


@dataclass(frozen=True, slots=True)
class Pattern:
    """How the lights look in one state."""

    kind: Literal["off", "solid", "pulse", "breathe", "blink", "flash"]
    color: Color = (0.0, 0.0, 0.0)
    level: float = 1.0  # brightness of a solid pattern, 0-1

    @property
    def animated(self) -> bool:
        return self.kind in ("pulse", "breathe", "blink", "flash")

    def level_at(self, t: float) -> float:
        """Brightness 0-1 of this pattern ``t`` seconds after it started."""
        if self.kind == "off":
            return 0.0
        if self.kind == "solid":
            return self.level
        if self.kind == "pulse":  # triangle wave, like gpiozero's pulse()
            phase = (t % (2 * PULSE_S)) / PULSE_S
            return phase if phase <= 1 else 2 - phase
        if self.kind == "breathe":
            phase = (t % (2 * BREATHE_S)) / (2 * BREATHE_S)
            return BREATHE_LOW + (1 - BREATHE_LOW) * (0.5 - 0.5 * math.cos(2 * math.pi * phase))
        period = FLASH_S if self.kind == "flash" else BLINK_S
        return 1.0 if (t % (2 * period)) < period else 0.0  # blink, flash


OFF = Pattern("off")
BLUE: Color = (0.0, 0.0, 1.0)
CYAN: Color = (0.0, 0.7, 1.0)
RED: Color = (1.0, 0.0, 0.0)
ORANGE: Color = (1.0, 0.35, 0.0)
WHITE: Color = (1.0, 1.0, 1.0)
AMBER: Color = (1.0, 0.75, 0.0)

PATTERNS: dict[State, Pattern] = {
    State.IDLE: OFF,
    State.LISTENING: Pattern("solid", BLUE),
    State.FOLLOW_UP: Pattern("solid", BLUE, 0.5),
    State.THINKING: Pattern("pulse", CYAN),
    State.SPEAKING: Pattern("breathe", BLUE),
    State.MUTED: Pattern("solid", RED),
    State.ERROR: Pattern("blink", ORANGE),
    State.RINGING: Pattern("flash", AMBER),
    State.DISABLED: OFF,
}


def pattern_for(state: State, idle: Literal["off", "dim"] = "off") -> Pattern:
    """The pattern shown in ``state``."""
    if state is State.IDLE and idle == "dim":
        return Pattern("solid", WHITE, DIM)
    return PATTERNS.get(state, OFF)


def apa102_frame(pixels: Sequence[tuple[int, int, int]], brightness: int) -> bytes:
    """One APA102 update: 32-bit zero start frame, per LED ``0xE0|brightness, B, G, R``, end frame.

    ``pixels`` are (r, g, b) 0-255, ``brightness`` the 5-bit global brightness 0-31. The end frame
    is zeros (not ones: a longer strip than configured would light its extra LEDs white), at least
    half a clock per LED so the last pixel latches.
    """
    b = 0xE0 | (max(0, min(31, brightness)))
    body = bytearray(b"\x00\x00\x00\x00")
    for r, g, bl in pixels:
        body += bytes((b, bl & 0xFF, g & 0xFF, r & 0xFF))
    body += b"\x00" * max(4, (len(pixels) + 15) // 16)
    return bytes(body)


def _scale(color: Color, k: float) -> Color:
    return (color[0] * k, color[1] * k, color[2] * k)


class _Driver:
    def show(self, state: State, pattern: Pattern) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self, blank: bool = True) -> None:
        raise NotImplementedError


class _SingleDriver(_Driver):
    """One LED per state; several states may share a pin."""

    def __init__(self, cfg: LedsConfig, factory: Factory | None) -> None:
        from gpiozero import LED, PWMLED
        from gpiozero.exc import PinPWMUnsupported

        self._devices: dict[int, Any] = {}
        self._pins: dict[State, int] = {State(name): pin for name, pin in cfg.pins.items()}
        if State.FOLLOW_UP not in self._pins and State.LISTENING in self._pins:
            self._pins[State.FOLLOW_UP] = self._pins[State.LISTENING]
        self._pwm = True
        try:
            for pin in sorted(set(self._pins.values())):
                try:
                    dev: Any = PWMLED(pin, active_high=cfg.active_high, pin_factory=factory)
                except PinPWMUnsupported:
                    dev = LED(pin, active_high=cfg.active_high, pin_factory=factory)
                    self._pwm = False
                self._devices[pin] = dev
        except Exception:
            self.close()
            raise
        self._current: dict[int, Pattern] = {}

    def show(self, state: State, pattern: Pattern) -> None:
        lit = self._pins.get(state)
        if lit is None and state is State.RINGING:  # without a lamp of its own: flash one that is there
            lit = self._pins.get(State.ERROR, self._pins.get(State.LISTENING))
        for pin, dev in self._devices.items():
            wanted = pattern if pin == lit else OFF
            if self._current.get(pin) == wanted:
                continue
            self._current[pin] = wanted
            self._apply(dev, wanted)

    def _apply(self, dev: Any, p: Pattern) -> None:
        from gpiozero import PWMLED

        pwm = isinstance(dev, PWMLED)
        if p.kind == "off" or p.level <= 0:
            dev.off()
        elif p.kind == "solid":
            if pwm:
                dev.value = p.level
            else:
                dev.on()
        elif p.kind == "pulse":
            dev.pulse(PULSE_S, PULSE_S) if pwm else dev.blink(PULSE_S, PULSE_S)
        elif p.kind == "breathe":
            dev.pulse(BREATHE_S, BREATHE_S) if pwm else dev.blink(BREATHE_S, BREATHE_S)
        elif p.kind == "flash":
            dev.blink(FLASH_S, FLASH_S)
        else:
            dev.blink(BLINK_S, BLINK_S)

    def describe(self) -> str:
        by_pin: dict[int, list[str]] = {}
        for state, pin in self._pins.items():
            by_pin.setdefault(pin, []).append(state.value)
        lamps = ", ".join(f"GPIO{pin} ({'/'.join(names)})" for pin, names in sorted(by_pin.items()))
        return f"single LEDs {lamps}{'' if self._pwm else ' without PWM'}"

    def close(self, blank: bool = True) -> None:
        for dev in self._devices.values():
            try:
                if blank:
                    dev.off()
                dev.close()
            except Exception:
                _LOG.debug("closing LED %r failed", dev, exc_info=True)
        self._devices.clear()


class _RgbDriver(_Driver):
    def __init__(self, cfg: LedsConfig, factory: Factory | None) -> None:
        from gpiozero import RGBLED

        self._cfg = cfg
        self._k = cfg.brightness / 100
        self._led = RGBLED(cfg.red_pin, cfg.green_pin, cfg.blue_pin, active_high=cfg.active_high, pwm=True, pin_factory=factory)

    def show(self, state: State, p: Pattern) -> None:
        color = _scale(p.color, self._k)
        led = self._led
        if p.kind == "off":
            led.off()
        elif p.kind == "solid":
            led.value = _scale(color, p.level)
        elif p.kind == "pulse":
            led.pulse(PULSE_S, PULSE_S, on_color=color, off_color=(0, 0, 0))
        elif p.kind == "breathe":
            led.pulse(BREATHE_S, BREATHE_S, on_color=color, off_color=_scale(color, BREATHE_LOW))
        elif p.kind == "flash":
            led.blink(FLASH_S, FLASH_S, on_color=color, off_color=(0, 0, 0))
        else:
            led.blink(BLINK_S, BLINK_S, on_color=color, off_color=(0, 0, 0))

    def describe(self) -> str:
        c = self._cfg
        return f"RGB LED GPIO{c.red_pin}/{c.green_pin}/{c.blue_pin}"

    def close(self, blank: bool = True) -> None:
        try:
            if blank:
                self._led.off()
            self._led.close()
        except Exception:
            _LOG.debug("closing RGB LED failed", exc_info=True)


def _apa102_device(factory: Factory | None, device: int) -> Any:
    from gpiozero import SPIDevice

    class APA102(SPIDevice):  # type: ignore[misc]
        """Write-only SPI device: the LED ring."""

        def write(self, data: bytes) -> None:
            self._spi.transfer(list(data))

    dev = APA102(port=0, device=device, pin_factory=factory)
    try:
        dev._spi.rate = 8_000_000  # the default 500 kHz makes a 12-LED frame take ~1 ms
    except Exception:
        pass  # software SPI has no rate
    return dev


class _RingDriver(_Driver):
    """APA102 ring; frames are rendered and written in the animator thread."""

    def __init__(self, cfg: LedsConfig, factory: Factory | None, fps: float = RING_FPS) -> None:
        self._cfg = cfg
        self._count = cfg.count
        self._brightness = round(31 * cfg.brightness / 100)
        self._fps = fps
        self._power: Any = None
        self._dev = _apa102_device(factory, cfg.spi_device)
        try:
            if cfg.power_pin >= 0:
                from gpiozero import LED

                self._power = LED(cfg.power_pin, pin_factory=factory)
                self._power.on()
        except Exception:
            self._dev.close()
            raise
        self._current: tuple[Pattern, float] = (OFF, time.monotonic())
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.frames_written = 0

    def show(self, state: State, pattern: Pattern) -> None:
        self._current = (pattern, time.monotonic())
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="leds-apa102", daemon=True)
            self._thread.start()
        self._wake.set()

    def render(self, pattern: Pattern, t: float) -> bytes:
        """The frame for ``pattern`` at ``t`` seconds into it."""
        k = pattern.level_at(t)
        r, g, b = (round(255 * c * k) for c in pattern.color)
        return apa102_frame([(r, g, b)] * self._count, self._brightness)

    def _run(self) -> None:
        last: bytes | None = None
        failing = False
        timeout: float | None = None
        next_t = time.monotonic()
        while True:
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stopping:
                return
            pattern, since = self._current
            now = time.monotonic()
            frame = self.render(pattern, now - since)
            if frame != last:
                try:
                    self._dev.write(frame)
                    self.frames_written += 1
                    last = frame
                    failing = False
                except Exception as exc:
                    if not failing:
                        _LOG.warning("LED ring write failed: %s: %s", type(exc).__name__, exc)
                    failing = True
            if pattern.animated:
                # frames on a fixed grid, so the time spent writing does not slow the animation
                next_t = max(next_t + 1 / self._fps, now)
                timeout = max(0.0, next_t - time.monotonic())
            else:
                timeout = 1.0 if failing else None  # retry a failed write; otherwise sleep until told

    def describe(self) -> str:
        power = f", power GPIO{self._cfg.power_pin}" if self._power is not None else ""
        return f"APA102 ring x{self._count} on SPI0.{self._cfg.spi_device}{power}"

    def close(self, blank: bool = True) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None
        if blank:
            try:
                self._dev.write(apa102_frame([(0, 0, 0)] * self._count, 0))
            except Exception:
                _LOG.debug("LED ring: final off frame failed", exc_info=True)
        self._dev.close()
        if self._power is not None:
            if blank:
                self._power.off()
            self._power.close()


def check_leds_config(cfg: LedsConfig) -> None:
    """Raise ConfigError naming the key if the [leds] section cannot describe real LEDs."""
    if cfg.kind == "single":
        if not cfg.pins:
            raise ConfigError("'leds.pins' is required for kind = 'single', e.g. pins = {listening = 5, muted = 6}")
        known = [s.value for s in State]
        for name, pin in cfg.pins.items():
            if name not in known:
                raise ConfigError(f"'leds.pins.{name}': unknown state (known: {', '.join(known)})")
            if not 0 <= pin <= 53:
                raise ConfigError(f"'leds.pins.{name}' must be a BCM pin 0-53, got {pin}")
    elif cfg.kind == "rgb":
        for key in ("red_pin", "green_pin", "blue_pin"):
            if getattr(cfg, key) < 0:
                raise ConfigError(f"'leds.{key}' is required for kind = 'rgb'")


class StatusLeds:
    """Shows the assistant's state on the configured LEDs.

    ``pin_factory`` is a gpiozero factory, a factory name (as in ``gpio.pin_factory``) or None
    for the default; buttons and LEDs share a factory when given the same name.
    """

    def __init__(self, leds: LedsConfig, bus: EventBus | None, pin_factory: Factory | str | None = None) -> None:
        check_leds_config(leds)
        self._cfg = leds
        self._bus = bus
        self._factory_arg = pin_factory
        self._driver: _Driver | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.state: State | None = None

    def _open(self) -> _Driver:
        from .gpio import GpioUnavailable, resolve_pin_factory

        arg = self._factory_arg
        factory = resolve_pin_factory(arg or "") if arg is None or isinstance(arg, str) else arg
        cfg = self._cfg
        try:
            if cfg.kind == "single":
                return _SingleDriver(cfg, factory)
            if cfg.kind == "rgb":
                return _RgbDriver(cfg, factory)
            return _RingDriver(cfg, factory)
        except Exception as exc:
            raise GpioUnavailable(f"cannot open the {cfg.kind} LEDs ([leds]): {type(exc).__name__}: {exc}") from None

    def start(self, initial: State = State.IDLE) -> None:
        """Open the LEDs, show ``initial`` and follow StateChanged events from now on."""
        if self._cfg.kind == "none":
            return
        self._driver = self._open()
        _LOG.info("status LEDs: %s", self._driver.describe())
        self.show(initial)
        if self._bus is not None:
            self._unsubscribe = self._bus.subscribe(self._on_state, StateChanged)

    def _on_state(self, event: Any) -> None:
        self.show(event.new)

    def show(self, state: State) -> None:
        """Show ``state`` now (call on the loop)."""
        driver = self._driver
        if driver is None:
            return
        self.state = state
        driver.show(state, pattern_for(state, self._cfg.idle))

    def probe(self) -> str:
        """Open and close the LEDs without changing them (for ``speaker check``); describes them."""
        if self._cfg.kind == "none":
            return "no LEDs"
        driver = self._open()
        try:
            return driver.describe()
        finally:
            driver.close(blank=False)

    def close(self) -> None:
        """Lights off, devices released."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._driver is not None:
            self._driver.close()
            self._driver = None


__all__ = ["PATTERNS", "Pattern", "StatusLeds", "apa102_frame", "check_leds_config", "pattern_for"]
