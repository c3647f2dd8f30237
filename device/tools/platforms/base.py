"""What every platform module shares: the command plan, the state it expects, reading a discovery config.

A platform module (``light``, ``cover``, ...) owns one kind of entity and provides:

- ``KINDS``: the entity types it handles (``DeviceSpec.type``) and ``COMPONENTS``: the discovery
  components it reads (``cover`` gives "cover" or "garage_door");
- ``read_discovery(f: Fields, kind) -> dict``: its DeviceSpec fields from an expanded discovery config;
- ``parse(spec, role, text) -> dict | None``: a message on one of its state topics -> state updates;
- ``actions(spec) -> tuple``: the control_device actions it supports;
- ``plan(dev, action, req: Request) -> Plan``: the messages for a command and the state expected;
- ``ACCEPTS``: which optional control_device arguments (brightness, color, position, temperature)
  make sense for it.

A platform whose settings have no DeviceSpec field returns them as ``options`` from
``read_discovery`` (read back with ``spec.option(key)``) and may add
``command_topics(spec) -> iterable of topics`` and ``state_topics(spec) -> iterable of (role, topic)``:
the command-topic guard and the subscriptions then include them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from device.tools.colors import colors_close
from device.tools.templates import Template, TemplateError


class DiscoveryError(ValueError):
    """A discovery config we cannot use; the message says why."""


class CommandError(Exception):
    """A control request that cannot be turned into messages; the message is for the model."""


class Fields:
    """Typed reads of an expanded discovery config; a wrong type raises :class:`DiscoveryError` naming the key."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def s(self, key: str, default: str = "") -> str:
        v = self.cfg.get(key, default)
        if v is None:
            return default
        if isinstance(v, bool):
            return "True" if v else "False"  # Home Assistant coerces payloads with str()
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return v
        raise DiscoveryError(f"{key!r} must be a string, got {type(v).__name__}")

    def topic(self, key: str) -> str:
        t = self.s(key)
        if t and ("#" in t or "+" in t or "\x00" in t):
            raise DiscoveryError(f"{key} {t!r} contains a wildcard")
        return t

    def tpl(self, key: str) -> Template | None:
        text = self.s(key)
        if not text:
            return None
        try:
            return Template(text)
        except TemplateError as exc:
            raise DiscoveryError(f"{key}: {exc}") from None

    def num(self, key: str, default: float) -> float:
        v = self.cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                return float(v)
            except (TypeError, ValueError):
                raise DiscoveryError(f"{key!r} must be a number, got {v!r}") from None
        return float(v)


def number(text: str | None) -> float | None:
    """A finite number from a message, or None."""
    if text is None:
        return None
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def value(tpl: Template | None, text: str) -> str | None:
    """A message through its value template (the message itself without one)."""
    return tpl.render_value(text) if tpl is not None else text


def state_word(tpl: Template | None, text: str, words: dict[str, str], known: Any, what: str) -> dict[str, Any] | None:
    """A state message as one of our words: the device's own payloads (``words``) first, then a
    word we know in any case; None for an empty message. Raises ValueError for anything else."""
    raw = value(tpl, text)
    if raw is None:
        return None
    raw = raw.strip()
    if raw in words:
        return {"state": words[raw]}
    if raw.lower() in known:
        return {"state": raw.lower()}
    if raw in ("", "None"):
        return None
    raise ValueError(f"not a {what} state")


@dataclass(frozen=True)
class Request:
    """A control_device call's optional arguments, checked (brightness/position 0-100, colour #rrggbb)."""

    brightness: float | None = None
    color: str | None = None
    position: float | None = None
    temperature: float | None = None


@dataclass
class Expect:
    """The state a command should lead to; None fields are not checked."""

    state: frozenset[str] | None = None
    brightness: int | None = None
    color: str | None = None
    position: int | None = None
    moving: str | None = None  # cover: "opening"/"closing" also counts for a position request
    target_temperature: float | None = None
    mode: str | None = None
    fail_states: frozenset[str] = field(default_factory=frozenset)

    def empty(self) -> bool:
        return all(v is None for v in (self.state, self.brightness, self.color, self.position, self.target_temperature, self.mode))

    def failed(self, st: dict[str, Any]) -> bool:
        return st.get("state") in self.fail_states

    def check(self, st: dict[str, Any]) -> bool:
        if self.position is not None:
            pos = st.get("position")
            at_target = isinstance(pos, (int, float)) and abs(pos - self.position) <= 2
            if not at_target and not (self.moving and st.get("state") == self.moving):
                return False
        if self.state is not None and st.get("state") not in self.state:
            return False
        if self.brightness is not None:
            b = st.get("brightness")
            if not isinstance(b, (int, float)) or abs(b - self.brightness) > 2:
                return False
        if self.color is not None:
            c = st.get("color")
            if not isinstance(c, str) or not colors_close(c, self.color):
                return False
        if self.target_temperature is not None:
            t = st.get("target_temperature")
            if not isinstance(t, (int, float)) or abs(t - self.target_temperature) > 0.26:
                return False
        if self.mode is not None and st.get("mode") != self.mode:
            return False
        return True

    def describe(self) -> str:
        parts: list[str] = []
        if self.state is not None:
            parts.append("state " + " or ".join(sorted(self.state)))
        if self.brightness is not None:
            parts.append(f"brightness {self.brightness}")
        if self.color is not None:
            parts.append(f"color {self.color}")
        if self.position is not None:
            parts.append(f"position {self.position}")
        if self.target_temperature is not None:
            parts.append(f"target temperature {self.target_temperature:g}")
        if self.mode is not None:
            parts.append(f"mode {self.mode}")
        return ", ".join(parts)


@dataclass
class Plan:
    """The messages of one command (topic, payload) and the state that confirms it."""

    messages: list[tuple[str, str]]
    expect: Expect


def expect_state(spec: Any, word: str) -> Expect:
    """Expect a state word when the entity reports its state, nothing otherwise."""
    return Expect(state=frozenset({word})) if spec.state_topic else Expect()


__all__ = ["CommandError", "DiscoveryError", "Expect", "Fields", "Plan", "Request", "expect_state", "number", "value"]
