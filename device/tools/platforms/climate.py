"""Thermostats and radiator valves: a set-point in °C (Fahrenheit devices get whole °F), on/off by mode."""

from __future__ import annotations

from typing import Any

from device.tools.platforms.base import CommandError, Expect, Fields, Plan, Request, number, value

KINDS = ("climate",)
COMPONENTS = ("climate",)
ACCEPTS = frozenset({"temperature"})


def read_discovery(f: Fields, kind: str) -> dict[str, Any]:
    modes = f.get("modes")
    unit = f.s("temperature_unit", "C").upper()
    return dict(
        temperature_command_topic=f.topic("temperature_command_topic"),
        temperature_command_template=f.tpl("temperature_command_template"),
        temperature_state_topic=f.topic("temperature_state_topic"),
        temperature_state_template=f.tpl("temperature_state_template"),
        current_temperature_topic=f.topic("current_temperature_topic"),
        current_temperature_template=f.tpl("current_temperature_template"),
        mode_command_topic=f.topic("mode_command_topic"),
        mode_command_template=f.tpl("mode_command_template"),
        mode_state_topic=f.topic("mode_state_topic"),
        mode_state_template=f.tpl("mode_state_template"),
        modes=tuple(str(m) for m in modes) if isinstance(modes, list) and modes else ("auto", "off", "cool", "heat", "dry", "fan_only"),
        min_temp=f.num("min_temp", 45.0 if unit == "F" else 7.0),
        max_temp=f.num("max_temp", 95.0 if unit == "F" else 35.0),
        temperature_unit="F" if unit == "F" else "C",
        power_command_topic=f.topic("power_command_topic"),
        payload_on=f.s("payload_on", "ON"),
        payload_off=f.s("payload_off", "OFF"),
    )


def parse(spec: Any, role: str, text: str) -> dict[str, Any] | None:
    if role in ("temperature", "current_temperature"):
        raw = value(spec.temperature_state_template if role == "temperature" else spec.current_temperature_template, text)
        if raw is None:
            return None
        v = number(raw)
        if v is None:
            raise ValueError("not a number")
        if spec.temperature_unit == "F":
            v = round((v - 32.0) * 5.0 / 9.0, 1)
        return {"target_temperature" if role == "temperature" else "current_temperature": v}
    if role == "mode":
        raw = value(spec.mode_state_template, text)
        return None if raw is None else {"mode": raw.strip()}
    if role == "state":
        raw = value(spec.value_template, text)
        return {"mode": raw.strip()} if raw and raw.strip() else None
    return None


def actions(spec: Any) -> tuple[str, ...]:
    acts: list[str] = []
    if spec.mode_command_topic or spec.power_command_topic:
        acts += ["turn_on", "turn_off"]
    if spec.temperature_command_topic or spec.mode_command_topic:
        acts.append("set")
    return tuple(acts)


def plan(dev: Any, action: str, req: Request) -> Plan:
    s = dev.spec
    temperature = req.temperature
    if action == "set":
        if temperature is None:
            raise CommandError("'set' on a thermostat needs 'temperature' (°C)")
        if not s.temperature_command_topic:
            raise CommandError(f"{s.name} has no set-point")
        fahrenheit = s.temperature_unit == "F"
        lo, hi = ((s.min_temp - 32) * 5 / 9, (s.max_temp - 32) * 5 / 9) if fahrenheit else (s.min_temp, s.max_temp)
        if not lo - 1e-9 <= temperature <= hi + 1e-9:
            raise CommandError(f"{s.name} accepts set-points from {lo:.3g} to {hi:.3g} °C, not {temperature:g}")
        if fahrenheit:  # the device speaks °F, in whole degrees
            setpoint: float = min(s.max_temp, max(s.min_temp, round(temperature * 9 / 5 + 32)))
            celsius = (setpoint - 32) * 5 / 9
        else:
            half = abs(temperature * 2 - round(temperature * 2)) < 1e-9
            setpoint = round(temperature * 2) / 2 if half else round(temperature, 1)
            celsius = setpoint
        payload = s.temperature_command_template.render({"value": setpoint}) if s.temperature_command_template else str(float(setpoint))
        expect = Expect(target_temperature=float(celsius)) if s.temperature_state_topic else Expect()
        return Plan([(s.temperature_command_topic, payload or str(float(setpoint)))], expect)
    on = action == "turn_on"
    if s.mode_command_topic:
        if on:
            preferred = [m for m in ("heat", "auto", "heat_cool", "cool") if m in s.modes]
            mode = preferred[0] if preferred else next((m for m in s.modes if m != "off"), "heat")
        else:
            mode = "off"
        payload = s.mode_command_template.render({"value": mode}) if s.mode_command_template else mode
        expect = Expect(mode=mode) if s.mode_state_topic else Expect()
        return Plan([(s.mode_command_topic, payload or mode)], expect)
    if s.power_command_topic:
        return Plan([(s.power_command_topic, s.payload_on if on else s.payload_off)], Expect())
    raise CommandError(f"{s.name} cannot be switched on or off")


__all__ = ["ACCEPTS", "COMPONENTS", "KINDS", "actions", "parse", "plan", "read_discovery"]
