"""The home in a few words per device: what the model reads in ``list_devices`` and ``{{devices}}``.

One line per device: ``Name (kind, Area): main state; other entities; readings``, e.g.
``Front door (lock, Hall): locked; battery 87 %`` or ``Coffee machine (switch, Kitchen): on;
power 1200 W, energy 3.2 kWh``. A device that is offline says so first.
"""

from __future__ import annotations

from typing import Any

from device.tools.device_registry import DeviceInfo, DeviceRegistry, normalize_name, tokens
from device.tools.devices import Device


# Units that say what a reading is: its name is left out when it is just that ("231 V", "19.8°C").
SELF_EXPLAINING_UNITS = frozenset({"W", "kW", "mW", "A", "mA", "V", "mV", "kWh", "Wh", "°C", "°F", "hPa", "lx", "ppm", "dB"})


def _with_unit(value: str, unit: str) -> str:
    if not unit:
        return value
    return f"{value}{unit}" if unit in ("%", "°C", "°F") else f"{value} {unit}"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def state_words(dev: Device) -> str:
    """An entity's state in a few words: 'on 40% #ff0000', 'open 30%', 'heat 21°C now 19.5°C', '21.5 °C'."""
    st = dev.snapshot()
    if st.get("available") is False:
        return "offline"
    t = dev.spec.type
    parts: list[str] = []
    if t == "sensor":
        if "value" in st:
            return _with_unit(_num(st["value"]), str(st.get("unit", "")))
        return ""
    if t == "climate":
        if "mode" in st:
            parts.append(str(st["mode"]))
        if "target_temperature" in st:
            parts.append(f"set {_num(st['target_temperature'])}°C")
        if "current_temperature" in st:
            parts.append(f"now {_num(st['current_temperature'])}°C")
        return " ".join(parts)
    if "state" in st:
        parts.append(str(st["state"]))
    if t == "light" and st.get("state") != "off":
        if "brightness" in st:
            parts.append(f"{st['brightness']}%")
        if "color" in st:
            parts.append(str(st["color"]))
    if t in ("cover", "garage_door") and "position" in st and st["position"] not in (0, 100):
        parts.append(f"{st['position']}%")  # fully open/closed says it already
    if t in ("scene", "button"):
        return ""
    return " ".join(parts)


def _kind(dev: Device) -> str:
    return dev.spec.type.replace("_", " ")


def _short(registry: DeviceRegistry, info: DeviceInfo, dev: Device) -> str:
    """An entity's name within its device: 'battery', 'Permit join'."""
    own = dev.spec.entity_name
    if own and info.name and normalize_name(own).startswith(normalize_name(info.name) + " "):
        own = own[len(info.name):].strip()
    name = own or dev.name
    return name[:1].lower() + name[1:] if name[:1].isupper() and not name[1:2].isupper() else name


def _reading(registry: DeviceRegistry, info: DeviceInfo, dev: Device) -> str:
    """'battery 87%', '1180.5 W' (the unit says it is the power), 'window off'."""
    words = state_words(dev)
    short = _short(registry, info, dev)
    dc = dev.spec.device_class.replace("_", " ")
    if dev.spec.unit in SELF_EXPLAINING_UNITS and dc and normalize_name(short) in (normalize_name(dc), normalize_name(dc) + "s"):
        return words
    return f"{short} {words}"


def _listed(dev: Device) -> bool:
    """Readings in the device's line: not diagnostics other than the battery (get_device_state has all)."""
    return dev.spec.entity_category != "diagnostic" or dev.spec.device_class == "battery"


def _repeats(dev: Device, main_words: str) -> bool:
    """A text sensor that says what the main entity says (a Yale's "Lock state: locked" next to "locked")."""
    value = dev.state.get("value")
    return dev.spec.type == "sensor" and isinstance(value, str) and bool(main_words) and value.strip().lower() == main_words


def device_line(registry: DeviceRegistry, info: DeviceInfo, ents: list[Device]) -> str:
    """One device in one line."""
    primary = registry.primary(ents)
    head = primary or ents[0]
    name = info.name or head.name
    if primary is not None and primary.name != name:
        name = primary.name  # e.g. a clash made it "Kitchen Lamp": say the name that resolves
    kind = _kind(primary) if primary is not None else "device" if any(e.spec.controllable for e in ents) else "sensors"
    label = f"{name} ({kind}, {info.area})" if info.area else f"{name} ({kind})"
    offline = any(e.snapshot().get("available") is False for e in ents)
    bits: list[str] = []
    if offline:
        bits.append("OFFLINE")
    main_words = state_words(primary) if primary is not None and not offline else ""
    if main_words:
        bits.append(main_words)
    others: list[str] = []
    readings: list[str] = []
    for e in ents:
        if e is primary:
            continue
        if e.spec.controllable:
            words = "" if offline else state_words(e)
            others.append(f"{_short(registry, info, e)} ({_kind(e)}{' ' + words if words else ''})")
        elif not offline and _listed(e) and state_words(e) and not _repeats(e, main_words):
            readings.append(_reading(registry, info, e))
    if others:
        bits.append("also " + ", ".join(others))
    if readings:
        bits.append(", ".join(readings))
    return label + (": " + "; ".join(bits) if bits else "")


def device_lines(registry: DeviceRegistry, area: str = "", kind: str = "") -> list[str]:
    """Every visible device as one line, optionally only those in ``area`` or with an entity of ``kind``."""
    a = tokens(area) if area else frozenset()
    k = normalize_name(kind).replace(" ", "_") if kind else ""
    out = []
    for info, ents in registry.devices():
        # in the area, or named after it when the device announced no area ("Kitchen fan")
        if a and not a <= tokens(info.area or ents[0].spec.area) and not (not info.area and a <= tokens(info.name or ents[0].name)):
            continue
        if k and not any(e.spec.type == k or (k == "alarm_control_panel" and e.spec.type == "alarm") for e in ents):
            continue
        out.append(device_line(registry, info, ents))
    return out


def areas(registry: DeviceRegistry) -> list[str]:
    return sorted({info.area for info, _ in registry.devices() if info.area}, key=str.casefold)


__all__ = ["areas", "device_line", "device_lines", "state_words"]
