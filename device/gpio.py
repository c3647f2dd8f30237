"""gpiozero pin factories, shared by the buttons (controls.py) and the status LEDs (leds.py).

A factory is created once per name, so buttons and LEDs given the same name use the same one.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpiozero.pins import Factory


class GpioUnavailable(OSError):
    """GPIO is configured but cannot be used here; the message says which part and why."""


# gpiozero's own order of preference when no factory is named.
_FACTORIES = {
    "lgpio": "gpiozero.pins.lgpio:LGPIOFactory",
    "rpigpio": "gpiozero.pins.rpigpio:RPiGPIOFactory",
    "pigpio": "gpiozero.pins.pigpio:PiGPIOFactory",
    "native": "gpiozero.pins.native:NativeFactory",
    "mock": "gpiozero.pins.mock:MockFactory",
}
_HINT = (
    "On a Raspberry Pi install lgpio (pip install lgpio, or apt install python3-lgpio); "
    "on a machine without GPIO remove the [gpio] and [leds] sections from the config."
)
_factory_cache: dict[str, Factory] = {}


def _load_factory(name: str) -> Factory:
    try:
        target = _FACTORIES[name]
    except KeyError:
        raise GpioUnavailable(
            f"'gpio.pin_factory' = {name!r} is not a gpiozero pin factory (known: {', '.join(_FACTORIES)})"
        ) from None
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    factory: Factory = getattr(module, cls_name)()
    return factory


def resolve_pin_factory(name: str = "") -> Factory:
    """The gpiozero pin factory called ``name`` ("" = the environment's or gpiozero's choice).

    Factories are created once per name and shared, so buttons and LEDs use the same one.
    Raises :class:`GpioUnavailable` naming each factory that failed and why.
    """
    name = (name or os.environ.get("GPIOZERO_PIN_FACTORY", "")).strip().lower()
    if name in _factory_cache:
        return _factory_cache[name]
    if name:
        try:
            factory = _load_factory(name)
        except GpioUnavailable:
            raise
        except Exception as exc:
            raise GpioUnavailable(
                f"GPIO is configured but gpiozero pin factory {name!r} failed: {type(exc).__name__}: {exc}. {_HINT}"
            ) from None
    else:
        failures: list[str] = []
        for candidate in ("lgpio", "rpigpio", "pigpio", "native"):
            try:
                factory = _load_factory(candidate)
                break
            except Exception as exc:
                failures.append(f"{candidate}: {exc}")
        else:
            raise GpioUnavailable(
                "GPIO is configured but this machine has no usable GPIO: every gpiozero pin factory failed ("
                + "; ".join(failures)
                + f"). {_HINT}"
            )
    _factory_cache[name] = factory
    return factory


def describe_factory(factory: Factory) -> str:
    """Short description, e.g. 'LGPIOFactory on Raspberry Pi 5B'."""
    try:
        model = f" on Raspberry Pi {factory.board_info.model}"
    except Exception:
        model = ""
    return f"{type(factory).__name__}{model}"


__all__ = ["GpioUnavailable", "describe_factory", "resolve_pin_factory"]
