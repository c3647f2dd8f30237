"""Fans: switched on and off like a switch (speed and presets are not offered to the model)."""

from __future__ import annotations

from device.tools.platforms.switch import ACCEPTS, actions, parse, plan, read_discovery

KINDS = ("fan",)
COMPONENTS = ("fan",)

__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
