"""TOML configuration -> frozen, validated settings.

Every problem is reported as one :class:`ConfigError` whose message names the file, the key and
what was expected. Secrets are read from files (or the environment) into :class:`Secret`, whose
``str``/``repr`` never show the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ConfigError(Exception):
    """The configuration is invalid; the message names file, key and expectation."""


class Secret:
    """A secret value that never shows itself in logs, reprs or exceptions."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The secret itself: only for the HTTP header or hash that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(from {self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _range(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"range": (lo, hi)}


def _f(default: Any, doc: str = "", **meta: Any) -> Any:
    meta["doc"] = doc
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# Topic levels without wildcards or empty levels, e.g. "speaker" or "home/speakers".
_TOPIC_PATH = r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*\Z"


@dataclass(frozen=True)
class AudioConfig:
    input: str = _f("default", "ALSA PCM of the microphone")
    output: str = _f("default", "ALSA PCM of the speaker")
    input_rate: int = _f(0, "capture rate in Hz; 0 = first the device accepts of 16000, 48000, 44100, 24000, 32000", **_range(0, 192000))
    input_channels: int = _f(0, "capture channels; 0 = mono if the device accepts it, else stereo", **_range(0, 8))
    input_channel: int = _f(-1, "which channel to use (0-based); -1 = mix all channels", **_range(-1, 7))
    output_rate: int = _f(0, "playback rate in Hz; 0 = 24000 if accepted, else 48000", **_range(0, 192000))
    output_channels: int = _f(0, "playback channels; 0 = mono if accepted, else stereo", **_range(0, 8))
    output_buffer_ms: int = _f(200, "speaker buffer size in ms (latency vs. underrun safety; at most 100 with echo cancellation on)", **_range(40, 2000))
    volume: int = _f(70, "initial volume 0-100 (a saved volume overrides it)", **_range(0, 100))
    cues: bool = _f(True, "play sound cues (wake, done, error, mute on/off)")
    cue_volume: int = _f(60, "volume of the cues relative to speech, 0-100", **_range(0, 100))
    dnd_announcements: Literal["queue", "drop"] = _f(
        "queue", "announcements during do-not-disturb: queue (spoken when it ends) or drop")
    echo_cancellation: bool = _f(False, "cancel the speaker's own sound in the microphone (software AEC: WebRTC AEC3, and a linear canceller for the wake word)")
    noise_suppression: int = _f(0, "noise suppression before the wake word and the session: 0 off, 1-4 gentle to strong", **_range(0, 4))
    auto_gain: int = _f(0, "automatic gain: 0 off, 1-31 = bring speech up to this many dB below full scale", **_range(0, 31))


@dataclass(frozen=True)
class WakeConfig:
    model: str = _f("hey_jarvis", "built-in name (hey_jarvis, alexa, okay_nabu, hey_mycroft, hey_rhasspy) or path to a .tflite/.onnx model")
    threshold: float = _f(0.5, "detection threshold 0-1", **_range(0.0, 1.0))
    refractory_s: float = _f(2.0, "ignore detections this long after one", **_range(0.0, 60.0))
    engine: Literal["tflite", "onnx"] = _f("tflite", "tflite (bundled models, default) or onnx (needs the 'onnx' extra)")
    threads: int = _f(1, "inference threads", **_range(1, 8))


def _check_max_tokens(value: Any) -> int | str:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4096):
        return value
    raise ValueError(f'must be an integer 1-4096, "inf", or 0 for the server default, got {value!r}')


def _table(value: Any, allowed: dict[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be {what}, got {value!r}")
    for key, item in value.items():
        if key not in allowed:
            raise ValueError(f"has unknown key {key!r} (known: {', '.join(allowed)})")
        if not isinstance(item, allowed[key]) or isinstance(item, bool) and bool not in allowed[key]:
            raise ValueError(f"key {key!r} has the wrong type: {item!r}")
    return dict(value)


def _check_truncation(value: Any) -> Any:
    if value in ("auto", "disabled"):
        return value
    t = _table(value, {"retention_ratio": (int, float), "post_instructions_tokens": (int,)},
               '"auto", "disabled" or a table {retention_ratio = 0.8, post_instructions_tokens = N}')
    ratio = t.get("retention_ratio")
    if ratio is None or not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"retention_ratio must be a number between 0 and 1, got {ratio!r}")
    if t.get("post_instructions_tokens", 1) < 1:
        raise ValueError(f"post_instructions_tokens must be at least 1, got {t['post_instructions_tokens']!r}")
    return t


def _check_tracing(value: Any) -> Any:
    if value == "auto":
        return value
    t = _table(value, {"workflow_name": (str,), "group_id": (str,), "metadata": (dict,)},
               '"auto" or a table {workflow_name, group_id, metadata}')
    if any(not isinstance(v, str) for v in t.get("metadata", {}).values()):
        raise ValueError("metadata values must be strings")
    return t


def _check_prompt(value: Any) -> Any:
    t = _table(value, {"id": (str,), "version": (str,), "variables": (dict,)}, "a table {id, version, variables}")
    if not t.get("id"):
        raise ValueError("needs an id (the prompt's pmpt_... id)")
    if any(not isinstance(v, str) for v in t.get("variables", {}).values()):
        raise ValueError("variables values must be strings")
    return t


@dataclass(frozen=True)
class RealtimeConfig:
    url: str = _f("wss://api.openai.com/v1/realtime", "realtime websocket URL")
    model: str = _f("gpt-realtime", "realtime model")
    voice: str = _f("marin", "output voice")
    instructions: str = _f(
        "You are a helpful voice assistant. Answer briefly, in a natural spoken style. Today is {{today}}.",
        "system instructions; placeholders {{today}} {{time}} {{language}} {{device}} {{devices}} {{tools}} (any other is an error)",
    )
    language: str = _f("en", "the household's language (ISO 639-1), for {{language}} and transcription")
    barge_in: Literal["wake_word", "voice"] = _f("wake_word", "wake_word, or voice (needs echo cancellation: hardware or audio.echo_cancellation)")
    speed: float = _f(1.0, "speech speed", **_range(0.25, 1.5))
    turn_detection: Literal["server_vad", "semantic_vad"] = _f("server_vad", "server turn detection")
    vad_threshold: float = _f(0.5, "server_vad threshold 0-1", **_range(0.0, 1.0))
    prefix_padding_ms: int = _f(300, "server_vad prefix padding", **_range(0, 5000))
    silence_duration_ms: int = _f(500, "server_vad silence that ends a turn", **_range(100, 10000))
    idle_timeout_ms: int = _f(0, "server_vad idle timeout; 0 = none", **_range(0, 30000))
    eagerness: Literal["low", "medium", "high", "auto"] = _f("auto", "semantic_vad eagerness")
    transcription_model: str = _f("gpt-4o-mini-transcribe", "input transcription model; empty = off")
    noise_reduction: Literal["far_field", "near_field", "off"] = _f("far_field", "input noise reduction")
    max_output_tokens: int | str = _f(0, "reply token cap 1-4096 or \"inf\"; 0 = server default (inf)", check=lambda v: _check_max_tokens(v), shape='an integer or "inf"')
    follow_up_s: float = _f(8.0, "window after a reply in which the person answers without the wake word", **_range(0.0, 120.0))
    connect_timeout_s: float = _f(5.0, "websocket connect timeout", **_range(0.5, 60.0))
    response_timeout_s: float = _f(15.0, "a server silent this long during a turn is an error", **_range(1.0, 120.0))
    tool_timeout_s: float = _f(5.0, "a tool call running longer fails", **_range(0.1, 60.0))
    max_session_s: float = _f(3300.0, "end sessions cleanly before the server's 60-minute limit", **_range(10.0, 3540.0))
    # ---- passed through to session.update only when set (see device/realtime/session_setup.py) ----
    transcription_prompt: str = _f(
        "auto", "prompt for input transcription; \"auto\" = the wake word and the household's device and area names, \"\" = none"
    )
    tool_choice: str = _f(
        "auto", "auto, none, required, or the name of one function the model must call", pattern=r"[A-Za-z0-9_-]{1,64}\Z"
    )
    truncation: Any = _f(
        None, "unset = server default; \"auto\", \"disabled\" or {retention_ratio = 0.8, post_instructions_tokens = N}",
        check=lambda v: _check_truncation(v),
    )
    tracing: Any = _f(
        None, "unset = no tracing; \"auto\" or {workflow_name = \"...\", group_id = \"...\", metadata = {k = \"v\"}}",
        check=lambda v: _check_tracing(v),
    )
    include: list[Literal["item.input_audio_transcription.logprobs"]] = _f([], "extra fields in server events")
    prompt: Any = _f(
        None, "reusable prompt reference {id = \"pmpt_...\", version = \"2\", variables = {name = \"value\"}}; unset = none",
        check=lambda v: _check_prompt(v), shape="a table",
    )


@dataclass(frozen=True)
class AuthConfig:
    token_url: str = _f("", "token service URL (token-service mode)")
    device_secret_file: str = _f("", "file holding this device's secret for the token service")
    api_base: str = _f("https://api.openai.com/v1", "API base for direct mode")
    api_key_file: str = _f("", "file holding the API key (direct mode); OPENAI_API_KEY also works")
    key_ttl_s: int = _f(600, "ephemeral key lifetime requested in direct mode", **_range(10, 7200))
    timeout_s: float = _f(5.0, "HTTP timeout for minting a key", **_range(0.5, 60.0))
    # Filled by the loader, not by the file:
    device_secret: Secret | None = field(default=None, metadata={"internal": True})
    api_key: Secret | None = field(default=None, metadata={"internal": True})

    @property
    def mode(self) -> Literal["service", "direct", "none"]:
        """How the device gets its ephemeral keys."""
        if self.token_url:
            return "service"
        if self.api_key is not None:
            return "direct"
        return "none"


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = _f(True, "connect to MQTT at all")
    host: str = _f("localhost", "broker host")
    port: int = _f(1883, "broker port", **_range(1, 65535))
    device_id: str = _f("speaker", "topics live under <topic_prefix>/<device_id>/", pattern=r"[A-Za-z0-9_-]{1,64}\Z")
    topic_prefix: str = _f("speaker", "root of the speaker's own topics", pattern=_TOPIC_PATH)
    discovery_prefix: str = _f("homeassistant", "Home Assistant discovery prefix", pattern=_TOPIC_PATH)
    discovery: bool = _f(True, "import devices from Home Assistant MQTT discovery")
    username: str = _f("", "broker user name")
    password_file: str = _f("", "file holding the broker password")
    client_id: str = _f("", "MQTT client id; empty = speaker-<device_id>")
    keepalive_s: int = _f(30, "MQTT keepalive", **_range(5, 600))
    tls: bool = _f(False, "use TLS")
    ca_file: str = _f("", "CA certificate file for TLS")
    cert_file: str = _f("", "client certificate for TLS")
    key_file: str = _f("", "client key for TLS")
    command_timeout_s: float = _f(3.0, "how long a device has to report the commanded state", **_range(0.1, 60.0))
    allow: list[str] = _f([], "only these devices (names) are exposed to the model; empty = all")
    deny: list[str] = _f([], "these devices (names) are never exposed to the model")
    arbitration_ms: int = _f(150, "wake arbitration window between speakers on one broker", **_range(0, 2000))
    password: Secret | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class DeviceConfig:
    """A home device declared in the config file (``[[devices]]``)."""

    name: str = _f("", "spoken name, e.g. 'kitchen light'", required=True)
    type: Literal["light", "switch", "cover", "lock", "climate", "fan", "scene", "button", "sensor", "binary_sensor", "garage_door", "alarm"] = _f(
        "switch", "device type", required=True
    )
    area: str = _f("", "room or area")
    command_topic: str = _f("", "topic commands are published to")
    state_topic: str = _f("", "topic the device reports its state on")
    availability_topic: str = _f("", "topic with online/offline")
    schema: Literal["default", "json"] = _f("default", "payload style: plain payloads or JSON (Zigbee2MQTT)")
    payload_on: str = _f("ON", "payload for on")
    payload_off: str = _f("OFF", "payload for off")
    state_on: str = _f("", "state payload meaning on; empty = payload_on")
    state_off: str = _f("", "state payload meaning off; empty = payload_off")
    payload_open: str = _f("OPEN", "cover: open")
    payload_close: str = _f("CLOSE", "cover: close")
    payload_stop: str = _f("STOP", "cover: stop")
    payload_lock: str = _f("LOCK", "lock: lock")
    payload_unlock: str = _f("UNLOCK", "lock: unlock")
    brightness_command_topic: str = _f("", "default schema: brightness command topic")
    brightness_state_topic: str = _f("", "default schema: brightness state topic")
    brightness_scale: int = _f(255, "device brightness at 100 %", **_range(1, 65535))
    position_command_topic: str = _f("", "cover: set position topic")
    position_topic: str = _f("", "cover: position state topic")
    temperature_command_topic: str = _f("", "climate: set-point command topic")
    temperature_state_topic: str = _f("", "climate: set-point state topic")
    mode_command_topic: str = _f("", "climate: mode command topic")
    mode_state_topic: str = _f("", "climate: mode state topic")
    value_template: str = _f("", "how to read the state payload, e.g. '{{ value_json.state }}' (or just the JSON key)")
    command_template: str = _f("", "how to build the command payload from {{ value }}, e.g. '{\"power\": \"{{ value }}\"}'")
    brightness_command_template: str = _f("", "how to build the brightness payload from {{ value }}")
    payload_available: str = _f("online", "availability payload meaning online")
    payload_not_available: str = _f("offline", "availability payload meaning offline")
    confirm: bool = _f(False, "require confirmed=true even for this type")


@dataclass(frozen=True)
class McpConfig:
    """One MCP server ([[mcp]]): offered to the model by the cloud, or bridged by the device (local)."""

    name: str = _f("", "short label of the server (the session's server_label; prefix of bridged tool names)",
                   required=True, pattern=r"[A-Za-z0-9_-]{1,32}\Z")
    server_url: str = _f("", "the server's streamable HTTP endpoint, e.g. http://homeassistant.local:8123/api/mcp", required=True)
    local: bool = _f(False, "true: the device connects and offers the tools as its own functions (a server the cloud cannot reach)")
    authorization_file: str = _f("", "file holding the access token (e.g. a Home Assistant long-lived token); empty = none")
    allowed_tools: list[str] = _f([], "only these tools of the server; empty = all")
    require_approval: Literal["never", "always"] = _f("never", "remote servers: whether each call needs approval (the device declines them)")
    headers: dict[str, str] = _f({}, "extra HTTP headers for the server")
    description: str = _f("", "what the server is for, shown to the model")
    connect_timeout_s: float = _f(5.0, "local servers: connect and list timeout", **_range(0.5, 60.0))
    # Filled by the loader, not by the file:
    authorization: Secret | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class GpioConfig:
    mute_pin: int = _f(-1, "BCM pin of the mute button; -1 = none", **_range(-1, 53))
    mute_mode: Literal["toggle", "latch"] = _f("toggle", "toggle: momentary button; latch: switch position is the state")
    talk_pin: int = _f(-1, "BCM pin of the talk button; -1 = none", **_range(-1, 53))
    pull_up: bool = _f(True, "buttons connect the pin to ground (internal pull-up)")
    bounce_ms: int = _f(30, "debounce time", **_range(0, 1000))
    long_press_s: float = _f(2.0, "holding the talk button this long mutes", **_range(0.2, 30.0))
    talk_mode: Literal["press", "hold"] = _f(
        "press", "press: a press starts/stops, a long press mutes; hold: push-to-talk (held = your turn, release = done)")
    pin_factory: str = _f("", "gpiozero pin factory (lgpio, rpigpio, pigpio, mock); empty = gpiozero's choice")


@dataclass(frozen=True)
class LedsConfig:
    kind: Literal["none", "single", "rgb", "apa102"] = _f("none", "none, single-colour LEDs, one RGB LED or an APA102 ring")
    active_high: bool = _f(True, "LED on = pin high")
    pins: dict[str, int] = _f({}, "single LEDs: state -> BCM pin, e.g. {listening = 5, muted = 6}")
    red_pin: int = _f(-1, "RGB LED red pin", **_range(-1, 53))
    green_pin: int = _f(-1, "RGB LED green pin", **_range(-1, 53))
    blue_pin: int = _f(-1, "RGB LED blue pin", **_range(-1, 53))
    count: int = _f(3, "APA102: number of LEDs (2-Mic HAT: 3, 4-Mic: 12)", **_range(1, 255))
    brightness: int = _f(40, "APA102/RGB brightness 0-100", **_range(0, 100))
    idle: Literal["off", "dim"] = _f("off", "idle pattern")
    spi_device: int = _f(1, "APA102: SPI0 chip select the ring is on (ReSpeaker HATs: 1)", **_range(0, 1))
    power_pin: int = _f(-1, "APA102: pin that powers the ring, set high at start (4-Mic HAT: 5); -1 = none", **_range(-1, 53))


@dataclass(frozen=True)
class StateConfig:
    dir: str = _f("", "where mute, volume, timers and reminders survive restarts; empty = $STATE_DIRECTORY or ~/.local/state/realtime-speaker")


@dataclass(frozen=True)
class TimersConfig:
    ring_max_s: int = _f(300, "a ringing timer or reminder stops by itself after this long (seconds)", **_range(5, 3600))
    missed_grace_s: int = _f(600, "a timer that ended while the speaker was off still rings at start if it ended less than this long ago (seconds); older ones are reported as missed", **_range(0, 86400))


@dataclass(frozen=True)
class HostConfig:
    """The ``[device]`` section: facts about the speaker itself."""

    timezone: str = _f("", "IANA time zone for reminders and spoken times, e.g. 'Europe/Berlin'; empty = the system's")


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = _f("info", "log level")


@dataclass(frozen=True)
class Settings:
    """The whole device configuration."""

    path: Path
    audio: AudioConfig = field(default_factory=AudioConfig)
    wake: WakeConfig = field(default_factory=WakeConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    leds: LedsConfig = field(default_factory=LedsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    timers: TimersConfig = field(default_factory=TimersConfig)
    device: HostConfig = field(default_factory=HostConfig)
    log: LogConfig = field(default_factory=LogConfig)
    devices: tuple[DeviceConfig, ...] = ()
    mcp: tuple[McpConfig, ...] = ()
    # Which sections the file had, e.g. to know whether MQTT or GPIO was asked for.
    present: frozenset[str] = frozenset()

    @property
    def state_dir(self) -> Path:
        """Directory for persistent device state (mute, volume)."""
        if self.state.dir:
            return Path(self.state.dir)
        env = os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        return Path.home() / ".local" / "state" / "realtime-speaker"


_SECTIONS: dict[str, type] = {
    "audio": AudioConfig,
    "wake": WakeConfig,
    "realtime": RealtimeConfig,
    "auth": AuthConfig,
    "mqtt": MqttConfig,
    "gpio": GpioConfig,
    "leds": LedsConfig,
    "state": StateConfig,
    "timers": TimersConfig,
    "device": HostConfig,
    "log": LogConfig,
}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def describe(tp: Any) -> str:
    """Human wording of an expected type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {describe(typing.get_args(tp)[0])}s".replace("a ", "", 1)
    if origin is dict:
        return f"a table of {describe(typing.get_args(tp)[1])}s".replace("a ", "", 1)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if tp is Any:
        return "a string or a table"
    return _TYPE_NAMES.get(tp, str(tp))


def _check_value(tp: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        return all(_check_value(item, v)[0] for v in value), [_check_value(item, v)[1] for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            return False, value
        return all(_check_value(item, v)[0] for v in value.values()), dict(value)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return False, value


def build_section(cls: type, table: Any, where: str, file: str) -> Any:
    """Validate one TOML table against a section dataclass; raise ConfigError naming the key."""
    import re

    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [{where}] must be a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{file}: unknown key '{where}.{unknown[0]}' (known keys in [{where}]: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in table:
            if f.metadata.get("required"):
                raise ConfigError(f"{file}: missing key '{key}': expected {describe(hints[name])} ({f.metadata.get('doc', '')})")
            continue
        value = table[name]
        check = f.metadata.get("check")
        if check is not None:  # keys whose values are one of several shapes validate themselves
            try:
                values[name] = check(value)
            except ValueError as exc:
                raise ConfigError(f"{file}: '{key}' {exc}") from None
            continue
        ok, value = _check_value(hints[name], value)
        if not ok:
            raise ConfigError(f"{file}: '{key}' must be {describe(hints[name])}, got {table[name]!r}")
        lo, hi = f.metadata.get("range", (None, None))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{file}: '{key}' must be between {lo} and {hi}, got {value!r}")
        pattern = f.metadata.get("pattern")
        if pattern and not re.match(pattern, value):
            raise ConfigError(f"{file}: '{key}' must match {pattern.removesuffix(chr(92) + 'Z')}, got {value!r}")
        values[name] = value
    return cls(**values)


def read_secret(path: str, key: str, file: str) -> Secret:
    """Read a secret file (first line, stripped); errors name the key and the file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: '{key}': secret file {p} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{file}: '{key}': secret file {p} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: '{key}': cannot read secret file {p}: {type(exc).__name__}") from None
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise ConfigError(f"{file}: '{key}': secret file {p} is empty")
    return Secret(value, str(p))


def parse_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; missing, unreadable and malformed files raise ConfigError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: config file is not readable by this user") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_settings(path: str | os.PathLike[str], env: typing.Mapping[str, str] | None = None) -> Settings:
    """Load and validate the device config at ``path``."""
    env = os.environ if env is None else env
    p = Path(path)
    data = parse_toml(p)
    file = str(p)
    unknown = sorted(set(data) - set(_SECTIONS) - {"devices", "mcp"})
    if unknown:
        raise ConfigError(f"{file}: unknown section [{unknown[0]}] (known: {', '.join(sorted([*_SECTIONS, 'devices', 'mcp']))})")
    sections = {name: build_section(cls, data.get(name, {}), name, file) for name, cls in _SECTIONS.items()}

    devices_raw = data.get("devices", [])
    if not isinstance(devices_raw, list):
        raise ConfigError(f"{file}: 'devices' must be an array of tables ([[devices]]), got {type(devices_raw).__name__}")
    devices = []
    seen: set[str] = set()
    for i, table in enumerate(devices_raw):
        dev = build_section(DeviceConfig, table, f"devices[{i}]", file)
        if not dev.name.strip():
            raise ConfigError(f"{file}: 'devices[{i}].name' must not be empty")
        if dev.name.casefold() in seen:
            raise ConfigError(f"{file}: 'devices[{i}].name' {dev.name!r} is used by another device")
        seen.add(dev.name.casefold())
        if dev.type not in ("sensor", "binary_sensor") and not dev.command_topic:
            raise ConfigError(f"{file}: 'devices[{i}].command_topic' is required for a {dev.type}")
        devices.append(dev)

    auth: AuthConfig = sections["auth"]
    rt: RealtimeConfig = sections["realtime"]
    if not rt.url.startswith(("ws://", "wss://")):
        raise ConfigError(f"{file}: 'realtime.url' must start with ws:// or wss://, got {rt.url!r}")
    if auth.token_url:
        if not auth.token_url.startswith(("http://", "https://")):
            raise ConfigError(f"{file}: 'auth.token_url' must be an http:// or https:// URL, got {auth.token_url!r}")
        if not auth.device_secret_file:
            raise ConfigError(f"{file}: 'auth.device_secret_file' is required with 'auth.token_url'")
        auth = dataclasses.replace(auth, device_secret=read_secret(auth.device_secret_file, "auth.device_secret_file", file))
    else:
        if auth.api_key_file:
            auth = dataclasses.replace(auth, api_key=read_secret(auth.api_key_file, "auth.api_key_file", file))
        elif env.get("OPENAI_API_KEY", "").strip():
            auth = dataclasses.replace(auth, api_key=Secret(env["OPENAI_API_KEY"].strip(), "OPENAI_API_KEY"))
    sections["auth"] = auth

    mqtt: MqttConfig = sections["mqtt"]
    if mqtt.password_file:
        mqtt = dataclasses.replace(mqtt, password=read_secret(mqtt.password_file, "mqtt.password_file", file))
    for key in ("ca_file", "cert_file", "key_file"):
        value = getattr(mqtt, key)
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"{file}: 'mqtt.{key}': file {value} does not exist")
    sections["mqtt"] = mqtt

    host: HostConfig = sections["device"]
    if host.timezone:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(host.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{file}: 'device.timezone' must be an IANA time zone such as 'Europe/Berlin' or 'UTC', got {host.timezone!r}"
            ) from None

    check_instructions(rt.instructions, "realtime.instructions", file)
    mcp = load_mcp(data.get("mcp", []), file)

    return Settings(path=p, devices=tuple(devices), mcp=mcp, present=frozenset(data), **sections)


INSTRUCTION_PLACEHOLDERS = ("today", "time", "language", "device", "devices", "tools")
"""What ``{{name}}`` in ``realtime.instructions`` may name (filled when a session opens)."""


def check_instructions(template: str, key: str, file: str) -> None:
    """An unknown ``{{placeholder}}`` is a config error naming it (a typo would reach the model verbatim)."""
    import re

    for m in re.finditer(r"\{\{\s*(\w+)\s*\}\}", template):
        if m.group(1).lower() not in INSTRUCTION_PLACEHOLDERS:
            known = " ".join("{{" + n + "}}" for n in INSTRUCTION_PLACEHOLDERS)
            raise ConfigError(f"{file}: '{key}': unknown placeholder {m.group(0)} (known: {known})")


def load_mcp(raw: Any, file: str) -> tuple[McpConfig, ...]:
    """Validate the [[mcp]] tables; read each server's authorization secret."""
    if not isinstance(raw, list):
        raise ConfigError(f"{file}: 'mcp' must be an array of tables ([[mcp]]), got {type(raw).__name__}")
    servers: list[McpConfig] = []
    for i, table in enumerate(raw):
        where = f"mcp[{i}]"
        srv = build_section(McpConfig, table, where, file)
        if any(s.name.casefold() == srv.name.casefold() for s in servers):
            raise ConfigError(f"{file}: '{where}.name' {srv.name!r} is used by another MCP server")
        if not srv.server_url.startswith(("http://", "https://")):
            raise ConfigError(f"{file}: '{where}.server_url' must be an http:// or https:// URL, got {srv.server_url!r}")
        if not srv.local and not srv.server_url.startswith("https://"):
            raise ConfigError(f"{file}: '{where}.server_url': the cloud reaches remote MCP servers over https only; "
                              f"set local = true for a server on the home network")
        if srv.local and srv.require_approval != "never":
            raise ConfigError(f"{file}: '{where}.require_approval': a local server's tools are called by the device, "
                              f"which has no approval step; use \"never\" or a remote server")
        if any(k.lower() == "authorization" for k in srv.headers):
            raise ConfigError(f"{file}: '{where}.headers': put the token in authorization_file, not in headers")
        if srv.authorization_file:
            secret = read_secret(srv.authorization_file, f"{where}.authorization_file", file)
            token = secret.reveal().removeprefix("Bearer ").strip()
            srv = dataclasses.replace(srv, authorization=Secret(token, secret.source))
        servers.append(srv)
    return tuple(servers)


def reference() -> str:
    """Markdown reference of every key with its default and meaning (for README)."""
    lines: list[str] = []
    for name, cls in [*_SECTIONS.items(), ("[devices]", DeviceConfig), ("[mcp]", McpConfig)]:
        lines.append(f"\n**[{name}]**\n\n| key | default | meaning |\n|---|---|---|")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            shown = json.dumps(default, ensure_ascii=False).replace("|", "\\|")
            shape = f.metadata.get("shape") or describe(hints[f.name])
            lines.append(f"| `{f.name}` | `{shown}` | {f.metadata.get('doc', '')} ({shape}) |")
    return "\n".join(lines)


__all__ = [
    "AudioConfig",
    "AuthConfig",
    "ConfigError",
    "DeviceConfig",
    "GpioConfig",
    "HostConfig",
    "LedsConfig",
    "LogConfig",
    "McpConfig",
    "MqttConfig",
    "RealtimeConfig",
    "Secret",
    "Settings",
    "StateConfig",
    "TimersConfig",
    "WakeConfig",
    "build_section",
    "load_settings",
    "parse_toml",
    "read_secret",
]
