"""Physical controls through gpiozero: the mute button (or switch) and the talk button.

gpiozero calls back in its own threads. Those callbacks only note the time of the edge and hand
it to the event loop with ``loop.call_soon_threadsafe``; everything else (debouncing, long-press
timing, calling the assistant) happens on the loop.

Debouncing is done here as well as by gpiozero's ``bounce_time``: a button's level counts once it
has been stable for ``bounce_ms``, read back from the pin. That works the same on every pin
factory (gpiozero's mock pins ignore ``bounce_time``, and RPi.GPIO's edge suppression can drop
the last edge of a bounce), so a bouncing mute button never toggles twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from .config import GpioConfig, LedsConfig
from .gpio import GpioUnavailable, describe_factory, resolve_pin_factory

if TYPE_CHECKING:
    from gpiozero import Button
    from gpiozero.pins import Factory

_LOG = logging.getLogger(__name__)


class ControlActions(Protocol):
    """What the buttons do; implemented by the Assistant."""

    async def set_muted(self, muted: bool, source: str) -> None: ...

    async def toggle_mute(self, source: str) -> None: ...

    async def talk_pressed(self) -> None:
        """Idle: start a conversation; speaking: stop it (the barge-in path)."""
        ...


class _Debounced:
    """A button's level once it has been stable for the bounce time. Lives on the loop."""

    def __init__(
        self,
        button: Button,
        bounce_s: float,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[bool, float], None],
    ) -> None:
        self.button = button
        self.level = bool(button.is_pressed)
        self._bounce_s = bounce_s
        self._loop = loop
        self._on_change = on_change
        self._timer: asyncio.TimerHandle | None = None
        self._first_edge = 0.0

    def edge(self, t: float) -> None:
        """A raw edge seen at monotonic time ``t`` (on the loop)."""
        if self._timer is None:
            self._first_edge = t
        else:
            self._timer.cancel()
        delay = max(0.0, t + self._bounce_s - time.monotonic())
        self._timer = self._loop.call_later(delay, self._settle)

    def _settle(self) -> None:
        self._timer = None
        level = bool(self.button.is_pressed)
        if level != self.level:
            self.level = level
            self._on_change(level, self._first_edge)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Controls:
    """The mute and talk buttons.

    Mute button, ``mute_mode = "toggle"``: each press toggles mute. ``"latch"``: a switch whose
    position is the state (closed = muted), applied at start and on every move (a change made
    meanwhile over MQTT holds until the switch is moved). Talk button: a short press calls
    ``talk_pressed()`` when released; holding it ``long_press_s`` mutes (and the release then does
    nothing). Acting on release is what lets a long press mute without first opening a
    conversation.
    """

    def __init__(
        self,
        gpio: GpioConfig,
        actions: ControlActions,
        loop: asyncio.AbstractEventLoop,
        pin_factory: Factory | None = None,
    ) -> None:
        self._cfg = gpio
        self._actions = actions
        self._loop = loop
        self.pin_factory: Factory | None = pin_factory
        self._buttons: list[Button] = []
        self._mute: _Debounced | None = None
        self._talk: _Debounced | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._talk_held = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def enabled(self) -> bool:
        """Whether any button is configured."""
        return self._cfg.mute_pin >= 0 or self._cfg.talk_pin >= 0

    def start(self) -> None:
        """Open the configured buttons; raises :class:`GpioUnavailable` if they cannot be opened."""
        if not self.enabled:
            _LOG.info("no buttons configured")
            return
        if self.pin_factory is None:
            self.pin_factory = resolve_pin_factory(self._cfg.pin_factory)
        cfg = self._cfg
        bounce_s = cfg.bounce_ms / 1000
        try:
            if cfg.mute_pin >= 0:
                button = self._open("mute", cfg.mute_pin)
                self._mute = _Debounced(button, bounce_s, self._loop, self._mute_changed)
            if cfg.talk_pin >= 0:
                button = self._open("talk", cfg.talk_pin)
                self._talk = _Debounced(button, bounce_s, self._loop, self._talk_changed)
        except Exception:
            self.close()
            raise
        if self._mute is not None:
            _LOG.info(
                "mute %s on GPIO%d%s",
                "switch" if cfg.mute_mode == "latch" else "button",
                cfg.mute_pin,
                f" (now {'muted' if self._mute.level else 'unmuted'})" if cfg.mute_mode == "latch" else "",
            )
            if cfg.mute_mode == "latch":
                # The switch's position wins over the saved state at start.
                level = self._mute.level
                self._loop.call_soon_threadsafe(lambda: self._call(self._actions.set_muted(level, "switch"), "mute switch"))
        if self._talk is not None:
            _LOG.info("talk button on GPIO%d (hold %.1f s to mute)", cfg.talk_pin, cfg.long_press_s)

    def _open(self, role: str, pin: int) -> Button:
        from gpiozero import Button

        cfg = self._cfg
        try:
            button = Button(
                pin,
                pull_up=cfg.pull_up,
                bounce_time=cfg.bounce_ms / 1000 if cfg.bounce_ms else None,
                pin_factory=self.pin_factory,
            )
        except Exception as exc:
            key = "gpio.mute_pin" if role == "mute" else "gpio.talk_pin"
            raise GpioUnavailable(f"cannot open the {role} button on GPIO{pin} ('{key}'): {type(exc).__name__}: {exc}") from None
        self._buttons.append(button)
        button.when_pressed = lambda: self._from_thread(role)
        button.when_released = lambda: self._from_thread(role)
        return button

    def _from_thread(self, role: str) -> None:
        # gpiozero's thread: note the time, hand over, touch nothing else.
        t = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._edge, role, t)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _edge(self, role: str, t: float) -> None:
        if self._closed:
            return
        target = self._mute if role == "mute" else self._talk
        if target is not None:
            target.edge(t)

    def _mute_changed(self, pressed: bool, t: float) -> None:
        if self._cfg.mute_mode == "latch":
            self._call(self._actions.set_muted(pressed, "switch"), "mute switch")
        elif pressed:
            if self._stop_ringing("mute button"):
                return  # the press stops the alarm; the microphone's mute stays as it was
            self._call(self._actions.toggle_mute("button"), "mute button")

    def _stop_ringing(self, source: str) -> bool:
        """While a timer rings, a button press stops it (and does nothing else)."""
        if not getattr(self._actions, "ringing", False):
            return False
        stop = getattr(self._actions, "stop_ringing", None)
        return bool(stop(source)) if stop is not None else False

    def _talk_changed(self, pressed: bool, t: float) -> None:
        if self._cfg.talk_mode == "hold":  # push-to-talk: down = the person's turn, up = done
            if pressed:
                self._call(self._actions.talk_down(), "talk button (down)")  # type: ignore[attr-defined]
            else:
                self._call(self._actions.talk_up(), "talk button (up)")  # type: ignore[attr-defined]
            return
        if pressed:
            self._talk_held = False
            if self._stop_ringing("talk button"):
                self._talk_held = True  # the release does nothing more
                return
            delay = max(0.0, t + self._cfg.long_press_s - time.monotonic())
            self._hold_timer = self._loop.call_later(delay, self._talk_hold)
            return
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if not self._talk_held:
            self._call(self._actions.talk_pressed(), "talk button")

    def _talk_hold(self) -> None:
        self._hold_timer = None
        self._talk_held = True
        _LOG.info("talk button held %.1f s: muting", self._cfg.long_press_s)
        self._call(self._actions.set_muted(True, "button"), "talk button (long press)")

    def _call(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        if self._closed:
            coro.close()
            return
        task = self._loop.create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                _LOG.error("%s action failed", what, exc_info=task.exception())

        task.add_done_callback(done)

    def close(self) -> None:
        """Release the pins; pending edges are ignored from now on."""
        self._closed = True
        for debounced in (self._mute, self._talk):
            if debounced is not None:
                debounced.cancel()
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        for button in self._buttons:
            try:
                button.close()
            except Exception:
                _LOG.exception("closing button %r failed", button)
        self._buttons.clear()


def probe_gpio(gpio: GpioConfig, leds: LedsConfig) -> str:
    """For ``speaker check``: open what is configured, close it again, describe it.

    Raises :class:`GpioUnavailable` (or ConfigError for an inconsistent [leds] section) with a
    message naming the failing part.
    """
    from .leds import StatusLeds

    parts: list[str] = []
    buttons = gpio.mute_pin >= 0 or gpio.talk_pin >= 0
    if not buttons and leds.kind == "none":
        return "no buttons or LEDs configured"
    factory = resolve_pin_factory(gpio.pin_factory)
    if buttons:
        loop = asyncio.new_event_loop()
        controls = Controls(gpio, _NoActions(), loop, pin_factory=factory)
        try:
            controls.start()
            if controls._mute is not None:
                if gpio.mute_mode == "latch":
                    state = "muted" if controls._mute.level else "unmuted"
                    parts.append(f"mute switch GPIO{gpio.mute_pin} ({state})")
                else:
                    parts.append(f"mute button GPIO{gpio.mute_pin}")
            if controls._talk is not None:
                parts.append(f"talk button GPIO{gpio.talk_pin}")
        finally:
            controls.close()
            loop.close()
    if leds.kind != "none":
        status = StatusLeds(leds, None, pin_factory=factory)
        parts.append(status.probe())
    return f"{describe_factory(factory)}: " + ", ".join(parts)


class _NoActions:
    async def set_muted(self, muted: bool, source: str) -> None:
        pass

    async def toggle_mute(self, source: str) -> None:
        pass

    async def talk_pressed(self) -> None:
        pass


__all__ = ["ControlActions", "Controls", "GpioUnavailable", "describe_factory", "probe_gpio", "resolve_pin_factory"]
