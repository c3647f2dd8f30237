"""Home Assistant MQTT discovery: config topics -> :class:`DeviceSpec`.

Topics: ``<prefix>/<component>/[<node_id>/]<object_id>/config`` (one entity) and
``<prefix>/device/<object_id>/config`` (device-based discovery, ``cmps`` holding the entities).
Abbreviated keys are expanded (Home Assistant's table, the part that matters here), ``~`` is the
base topic, an empty retained payload removes the entity. Zigbee2MQTT, ESPHome and Tasmota devices
all announce themselves this way. The common part of an entity (names by Home Assistant's rules,
its device, availability) is read here; what a kind of entity adds, by its platform module.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.tools.devices import Availability, DeviceSpec, Template
from device.tools import platforms as _platforms
from device.tools.platforms import COMPONENTS as PLATFORM_COMPONENTS
from device.tools.platforms import kind_of, platform
from device.tools.platforms.base import DiscoveryError, Fields

_LOG = logging.getLogger(__name__)

COMPONENTS = PLATFORM_COMPONENTS  # every component a platform module reads

# Home Assistant's abbreviations (homeassistant/components/mqtt/abbreviations.py) for the keys of
# the platforms here plus the generic ones (device-based discovery's cmps/p/o, def_ent_id).
ABBREVIATIONS: dict[str, str] = {
    "act_t": "action_topic",
    "act_tpl": "action_template",
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "bri_cmd_t": "brightness_command_topic",
    "bri_cmd_tpl": "brightness_command_template",
    "bri_scl": "brightness_scale",
    "bri_stat_t": "brightness_state_topic",
    "bri_tpl": "brightness_template",
    "bri_val_tpl": "brightness_value_template",
    "clr_temp_cmd_t": "color_temp_command_topic",
    "clr_temp_cmd_tpl": "color_temp_command_template",
    "clr_temp_stat_t": "color_temp_state_topic",
    "clr_temp_tpl": "color_temp_template",
    "clr_temp_val_tpl": "color_temp_value_template",
    "clrm": "color_mode",
    "clrm_stat_t": "color_mode_state_topic",
    "clrm_val_tpl": "color_mode_value_template",
    "cmd_off_tpl": "command_off_template",
    "cmd_on_tpl": "command_on_template",
    "cmd_t": "command_topic",
    "cmd_tpl": "command_template",
    "cmps": "components",
    "cod_arm_req": "code_arm_required",
    "cod_dis_req": "code_disarm_required",
    "cod_trig_req": "code_trigger_required",
    "curr_temp_t": "current_temperature_topic",
    "curr_temp_tpl": "current_temperature_template",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "fan_mode_cmd_t": "fan_mode_command_topic",
    "fan_mode_cmd_tpl": "fan_mode_command_template",
    "fan_mode_stat_t": "fan_mode_state_topic",
    "fan_mode_stat_tpl": "fan_mode_state_template",
    "frc_upd": "force_update",
    "fx_cmd_t": "effect_command_topic",
    "fx_cmd_tpl": "effect_command_template",
    "fx_list": "effect_list",
    "fx_stat_t": "effect_state_topic",
    "fx_tpl": "effect_template",
    "fx_val_tpl": "effect_value_template",
    "hs_cmd_t": "hs_command_topic",
    "hs_stat_t": "hs_state_topic",
    "hs_val_tpl": "hs_value_template",
    "ic": "icon",
    "json_attr": "json_attributes",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_t": "last_reset_topic",
    "lrst_val_tpl": "last_reset_value_template",
    "max_hum": "max_humidity",
    "max_mirs": "max_mireds",
    "max_temp": "max_temp",
    "min_hum": "min_humidity",
    "min_mirs": "min_mireds",
    "min_temp": "min_temp",
    "mode_cmd_t": "mode_command_topic",
    "mode_cmd_tpl": "mode_command_template",
    "mode_stat_t": "mode_state_topic",
    "mode_stat_tpl": "mode_state_template",
    "modes": "modes",
    "name": "name",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "on_cmd_type": "on_command_type",
    "ops": "options",
    "opt": "optimistic",
    "osc_cmd_t": "oscillation_command_topic",
    "osc_cmd_tpl": "oscillation_command_template",
    "osc_stat_t": "oscillation_state_topic",
    "osc_val_tpl": "oscillation_value_template",
    "p": "platform",
    "pct_cmd_t": "percentage_command_topic",
    "pct_cmd_tpl": "percentage_command_template",
    "pct_stat_t": "percentage_state_topic",
    "pct_val_tpl": "percentage_value_template",
    "pl": "payload",
    "pl_arm_away": "payload_arm_away",
    "pl_arm_custom_b": "payload_arm_custom_bypass",
    "pl_arm_home": "payload_arm_home",
    "pl_arm_nite": "payload_arm_night",
    "pl_arm_vacation": "payload_arm_vacation",
    "pl_avail": "payload_available",
    "pl_cls": "payload_close",
    "pl_disarm": "payload_disarm",
    "pl_inst": "payload_install",
    "pl_lock": "payload_lock",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "pl_open": "payload_open",
    "pl_osc_off": "payload_oscillation_off",
    "pl_osc_on": "payload_oscillation_on",
    "pl_prs": "payload_press",
    "pl_rst": "payload_reset",
    "pl_stop": "payload_stop",
    "pl_trig": "payload_trigger",
    "pl_unlk": "payload_unlock",
    "pos_clsd": "position_closed",
    "pos_open": "position_open",
    "pos_t": "position_topic",
    "pos_tpl": "position_template",
    "pow_cmd_t": "power_command_topic",
    "pow_cmd_tpl": "power_command_template",
    "pow_stat_t": "power_state_topic",
    "pow_stat_tpl": "power_state_template",
    "pr_mode_cmd_t": "preset_mode_command_topic",
    "pr_mode_cmd_tpl": "preset_mode_command_template",
    "pr_mode_stat_t": "preset_mode_state_topic",
    "pr_mode_val_tpl": "preset_mode_value_template",
    "pr_modes": "preset_modes",
    "ret": "retain",
    "rgb_cmd_t": "rgb_command_topic",
    "rgb_cmd_tpl": "rgb_command_template",
    "rgb_stat_t": "rgb_state_topic",
    "rgb_val_tpl": "rgb_value_template",
    "rgbw_cmd_t": "rgbw_command_topic",
    "rgbw_cmd_tpl": "rgbw_command_template",
    "rgbw_stat_t": "rgbw_state_topic",
    "rgbw_val_tpl": "rgbw_value_template",
    "rgbww_cmd_t": "rgbww_command_topic",
    "rgbww_cmd_tpl": "rgbww_command_template",
    "rgbww_stat_t": "rgbww_state_topic",
    "rgbww_val_tpl": "rgbww_value_template",
    "set_pos_t": "set_position_topic",
    "set_pos_tpl": "set_position_template",
    "spd_rng_max": "speed_range_max",
    "spd_rng_min": "speed_range_min",
    "stat_cla": "state_class",
    "stat_closing": "state_closing",
    "stat_clsd": "state_closed",
    "stat_jam": "state_jammed",
    "stat_locked": "state_locked",
    "stat_locking": "state_locking",
    "stat_off": "state_off",
    "stat_on": "state_on",
    "stat_open": "state_open",
    "stat_opening": "state_opening",
    "stat_stopped": "state_stopped",
    "stat_t": "state_topic",
    "stat_tpl": "state_template",
    "stat_unlocked": "state_unlocked",
    "stat_unlocking": "state_unlocking",
    "stat_val_tpl": "state_value_template",
    "step": "step",
    "sug_dsp_prc": "suggested_display_precision",
    "sup_clrm": "supported_color_modes",
    "sup_dur": "support_duration",
    "sup_feat": "supported_features",
    "sup_vol": "support_volume_set",
    "swing_mode_cmd_t": "swing_mode_command_topic",
    "swing_mode_cmd_tpl": "swing_mode_command_template",
    "swing_mode_stat_t": "swing_mode_state_topic",
    "swing_mode_stat_tpl": "swing_mode_state_template",
    "t": "topic",
    "temp_cmd_t": "temperature_command_topic",
    "temp_cmd_tpl": "temperature_command_template",
    "temp_hi_cmd_t": "temperature_high_command_topic",
    "temp_hi_cmd_tpl": "temperature_high_command_template",
    "temp_hi_stat_t": "temperature_high_state_topic",
    "temp_hi_stat_tpl": "temperature_high_state_template",
    "temp_lo_cmd_t": "temperature_low_command_topic",
    "temp_lo_cmd_tpl": "temperature_low_command_template",
    "temp_lo_stat_t": "temperature_low_state_topic",
    "temp_lo_stat_tpl": "temperature_low_state_template",
    "temp_stat_t": "temperature_state_topic",
    "temp_stat_tpl": "temperature_state_template",
    "temp_step": "temp_step",
    "temp_unit": "temperature_unit",
    "tilt_clsd_val": "tilt_closed_value",
    "tilt_cmd_t": "tilt_command_topic",
    "tilt_cmd_tpl": "tilt_command_template",
    "tilt_opnd_val": "tilt_opened_value",
    "tilt_status_t": "tilt_status_topic",
    "tilt_status_tpl": "tilt_status_template",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
    "whit_cmd_t": "white_command_topic",
    "whit_scl": "white_scale",
    "xy_cmd_t": "xy_command_topic",
    "xy_stat_t": "xy_state_topic",
    "xy_val_tpl": "xy_value_template",
}

DEVICE_ABBREVIATIONS: dict[str, str] = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "name": "name",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
    "via_device": "via_device",
}

ORIGIN_ABBREVIATIONS: dict[str, str] = {"name": "name", "sw": "sw_version", "url": "support_url"}

TOPIC_BASE = "~"

_ID = r"[A-Za-z0-9_-]+"


@dataclass(frozen=True)
class DiscoveryTopic:
    component: str
    node_id: str
    object_id: str


def parse_topic(topic: str, prefix: str) -> DiscoveryTopic | None:
    """Split ``<prefix>/<component>/[<node_id>/]<object_id>/config``; None if it is not one."""
    m = re.fullmatch(rf"{re.escape(prefix)}/({_ID})/(?:({_ID})/)?({_ID})/config", topic)
    if not m:
        return None
    return DiscoveryTopic(m.group(1), m.group(2) or "", m.group(3))


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """Expand abbreviated keys (entity, device, origin, availability entries) and the ``~`` base topic."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        out[ABBREVIATIONS.get(key, key)] = value
    if isinstance(out.get("device"), dict):
        out["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in out["device"].items()}
    if isinstance(out.get("origin"), dict):
        out["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in out["origin"].items()}
    avty = out.get("availability")
    if isinstance(avty, list):
        out["availability"] = [
            {ABBREVIATIONS.get(k, k): v for k, v in entry.items()} if isinstance(entry, dict) else entry for entry in avty
        ]
    if TOPIC_BASE in out:
        base = out.pop(TOPIC_BASE)
        if isinstance(base, str):
            for key, value in list(out.items()):
                if key.endswith("topic") and isinstance(value, str) and value:
                    out[key] = _apply_base(value, base)
            if isinstance(out.get("availability"), list):
                for entry in out["availability"]:
                    if isinstance(entry, dict) and isinstance(entry.get("topic"), str) and entry["topic"]:
                        entry["topic"] = _apply_base(entry["topic"], base)
    return out


def _apply_base(value: str, base: str) -> str:
    if value.startswith(TOPIC_BASE):
        return base + value[1:]
    if value.endswith(TOPIC_BASE):
        return value[:-1] + base
    return value


def _s(cfg: dict[str, Any], key: str, default: str = "") -> str:
    return Fields(cfg).s(key, default)


def _topic(cfg: dict[str, Any], key: str) -> str:
    return Fields(cfg).topic(key)


def _tpl(cfg: dict[str, Any], key: str) -> Template | None:
    return Fields(cfg).tpl(key)


# Home Assistant's name for an entity without a name and without a device class (DEFAULT_NAME of
# each MQTT platform), and the platforms whose unnamed entities are named after their device class.
DEFAULT_NAMES: dict[str, str] = {
    "light": "MQTT Light", "switch": "MQTT Switch", "cover": "MQTT Cover", "lock": "MQTT Lock", "climate": "MQTT HVAC",
    "fan": "MQTT Fan", "scene": "MQTT Scene", "button": "MQTT Button", "sensor": "MQTT Sensor",
    "binary_sensor": "MQTT Binary sensor", "alarm_control_panel": "MQTT Alarm",
}
DEVICE_CLASS_NAMED = frozenset({"sensor", "binary_sensor", "button", "number", "event", "update"})
# How Home Assistant's English translations spell device classes whose name is not the id capitalised.
DEVICE_CLASS_WORDS: dict[str, str] = {
    "pm25": "PM2.5", "pm10": "PM10", "pm1": "PM1", "co": "Carbon monoxide", "co2": "Carbon dioxide",
    "aqi": "Air quality index", "volatile_organic_compounds": "Volatile organic compounds", "ph": "pH",
}


def device_class_name(device_class: str) -> str:
    """'battery' -> 'Battery', 'atmospheric_pressure' -> 'Atmospheric pressure'."""
    if device_class in DEVICE_CLASS_WORDS:
        return DEVICE_CLASS_WORDS[device_class]
    words = device_class.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def ha_entity_name(cfg: dict[str, Any], component: str) -> str | None:
    """The entity's own name by Home Assistant's rules; None means the entity is the device itself.

    ``name`` present (even null) wins; without it, sensors, binary sensors and buttons with a device
    class are named by the class ("Battery"), everything else gets the platform's default name.
    """
    if "name" in cfg:
        name = cfg["name"]
        return name.strip() if isinstance(name, str) else None
    dc = cfg.get("device_class")
    if component in DEVICE_CLASS_NAMED and isinstance(dc, str) and dc and not (component == "sensor" and dc == "enum"):
        return device_class_name(dc)
    if component == "light" and cfg.get("schema") == "json":
        return "MQTT JSON Light"
    return DEFAULT_NAMES.get(component, f"MQTT {component}")


def _device_block(cfg: dict[str, Any]) -> dict[str, Any]:
    device = cfg.get("device")
    return device if isinstance(device, dict) else {}


def device_identity(cfg: dict[str, Any]) -> str:
    """The device's id: its first identifier (or connection); '' for an entity without a device."""
    device = _device_block(cfg)
    ids = device.get("identifiers")
    if isinstance(ids, str) and ids:
        return f"id:{ids}"
    if isinstance(ids, list) and ids:
        return f"id:{ids[0]}"
    cns = device.get("connections")
    if isinstance(cns, list) and cns and isinstance(cns[0], list):
        return "cn:" + ":".join(str(c) for c in cns[0])
    return ""


def entity_name(cfg: dict[str, Any], d: DiscoveryTopic) -> str:
    """The full name Home Assistant shows: device name + entity name; the device's name alone for
    ``name: null``; the object id when there is neither (as a last resort, never the id otherwise)."""
    from device.tools.device_registry import compose_name

    device = _device_block(cfg)
    dev_name = device.get("name") if isinstance(device.get("name"), str) else ""
    fallback = d.object_id.replace("_", " ")
    return compose_name(dev_name, ha_entity_name(cfg, d.component), fallback) or fallback


Ignore = Callable[[dict[str, Any]], bool]


def spec_from_discovery(topic: str, d: DiscoveryTopic, raw: dict[str, Any], ignore: Ignore | None = None) -> DeviceSpec | None:
    """One entity's config -> DeviceSpec; None for entities the model should not see (diagnostics,
    disabled ones, unsupported components, ``ignore(expanded config)``). Raises DiscoveryError when
    the config is unusable."""
    cfg = expand(raw)
    component = d.component
    if component not in _platforms.BY_COMPONENT or (ignore is not None and ignore(cfg)):
        return None
    category = cfg.get("entity_category") if isinstance(cfg.get("entity_category"), str) else ""
    # Settings (config) and entities disabled by default are not for the model, as in Home
    # Assistant; diagnostic readings (battery, connectivity) are kept: people ask for them.
    if category == "config" or cfg.get("enabled_by_default") is False:
        return None
    if category == "diagnostic" and component not in ("sensor", "binary_sensor"):
        return None
    device = _device_block(cfg)
    area = device.get("suggested_area") or cfg.get("suggested_area") or ""
    area = area.strip() if isinstance(area, str) else ""
    device_class = _s(cfg, "device_class")
    kind = kind_of(component, cfg)

    availability: list[Availability] = []
    avty_tpl = _tpl(cfg, "availability_template")
    if _topic(cfg, "availability_topic"):
        availability.append(Availability(
            _topic(cfg, "availability_topic"),
            _s(cfg, "payload_available", "online"),
            _s(cfg, "payload_not_available", "offline"),
            avty_tpl,
        ))
    entries = cfg.get("availability")
    if isinstance(entries, list):
        for entry in entries:
            if not isinstance(entry, dict) or not _topic(entry, "topic"):
                raise DiscoveryError("availability entries need a 'topic'")
            availability.append(Availability(
                _topic(entry, "topic"),
                _s(entry, "payload_available", "online"),
                _s(entry, "payload_not_available", "offline"),
                _tpl(entry, "value_template"),
            ))
    mode = _s(cfg, "availability_mode", "latest")
    if mode not in ("latest", "all", "any"):
        mode = "latest"

    common: dict[str, Any] = dict(
        key=f"discovery:{topic}",
        name=entity_name(cfg, d),
        type=kind,
        area=area,
        source="discovery",
        device_id=device_identity(cfg) or f"discovery:{topic}",
        device_name=device.get("name").strip() if isinstance(device.get("name"), str) else "",
        entity_name=ha_entity_name(cfg, component),
        entity_category=category,
        model=str(device.get("model") or ""),
        manufacturer=str(device.get("manufacturer") or ""),
        via_device=str(device.get("via_device") or ""),
        device_class=device_class,
        command_topic=_topic(cfg, "command_topic"),
        command_template=_tpl(cfg, "command_template"),
        state_topic=_topic(cfg, "state_topic"),
        value_template=_tpl(cfg, "value_template") or _tpl(cfg, "state_value_template"),
        availability=tuple(availability),
        availability_mode=mode,
        optimistic=bool(cfg.get("optimistic")),
    )
    common.update(platform(kind).read_discovery(Fields(cfg), kind))  # what this kind of entity adds
    spec = DeviceSpec(**common)
    if spec.controllable and not spec.command_topics():
        raise DiscoveryError(f"a {component} needs a command topic")
    if not spec.controllable and not spec.state_topic:
        raise DiscoveryError(f"a {component} needs a state_topic")
    return spec


def parse_message(topic: str, payload: bytes, prefix: str, ignore: Ignore | None = None) -> list[tuple[str, DeviceSpec | None]]:
    """A discovery message -> [(key, spec or None to remove)]. Raises DiscoveryError when malformed.

    ``ignore`` gets each entity's expanded config; True leaves the entity out (e.g. speakers' own)."""
    d = parse_topic(topic, prefix)
    if d is None:
        raise DiscoveryError("not a discovery config topic")
    if not payload.strip():
        if d.component == "device":
            return [(f"discovery:{topic}#", None)]
        return [(f"discovery:{topic}", None)]
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DiscoveryError(f"payload is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DiscoveryError("payload must be a JSON object")
    if d.component != "device":
        return [(f"discovery:{topic}", spec_from_discovery(topic, d, raw, ignore))]
    # Device-based discovery: shared keys at the top, one entity per entry of "components".
    base = raw.get(TOPIC_BASE)
    top = expand(raw)
    comps = top.pop("components", None)
    if not isinstance(comps, dict):
        raise DiscoveryError("device discovery needs a 'components' object")
    results: list[tuple[str, DeviceSpec | None]] = []
    for comp_id, comp in comps.items():
        key = f"discovery:{topic}#{comp_id}"
        if not isinstance(comp, dict):
            raise DiscoveryError(f"component {comp_id!r} must be an object")
        if isinstance(base, str) and TOPIC_BASE not in comp:
            comp = {TOPIC_BASE: base, **comp}
        entity = expand(comp)
        platform = entity.pop("platform", None)
        if not isinstance(platform, str) or platform not in _platforms.BY_COMPONENT:
            results.append((key, None))
            continue
        if not entity:  # only the platform key: Home Assistant's way to remove one component
            results.append((key, None))
            continue
        merged = {**top, **entity}  # shared options at device level, the entity's own win
        sub = DiscoveryTopic(platform, d.object_id, str(comp_id))
        try:
            spec = spec_from_discovery(topic, sub, merged, ignore)
        except DiscoveryError as exc:  # one unusable component must not cost the others
            _LOG.warning("discovery: skipped component %s of %s: %s", comp_id, topic, exc)
            spec = None
        if spec is not None:
            spec = DeviceSpec(**{**spec.__dict__, "key": key})
        results.append((key, spec))
    return results


__all__ = [
    "ABBREVIATIONS",
    "COMPONENTS",
    "DEVICE_ABBREVIATIONS",
    "DiscoveryError",
    "DiscoveryTopic",
    "device_class_name",
    "device_identity",
    "entity_name",
    "ha_entity_name",
    "expand",
    "parse_message",
    "parse_topic",
    "spec_from_discovery",
]
