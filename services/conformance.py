"""Conformance of realtime events against the ``openai`` SDK's GA models.

The SDK's pydantic models accept extra keys, the real server does not (it rejects a whole
``session.update`` that holds one unknown key). So besides validating against the models (strict,
as JSON, the way the wire carries it), every validated model is walked recursively and any key its
model does not declare is flagged, with its path. A few value ranges the API documents but the
models do not encode are checked too.

Needs the ``openai`` package (a test dependency); :func:`available` tells whether it is there.
"""

from __future__ import annotations

import json
import typing
from functools import lru_cache
from typing import Any

try:  # the SDK is a test/demo dependency, not a device one
    import pydantic
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
    from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without the SDK
    _IMPORT_ERROR = f"{exc}"

# Documented limits the SDK models leave out: (path suffix, low, high).
_RANGES: tuple[tuple[str, float, float], ...] = (
    ("session.audio.input.turn_detection.threshold", 0.0, 1.0),
    ("session.audio.output.speed", 0.25, 1.5),
    ("session.max_output_tokens", 1, 4096),
    ("response.max_output_tokens", 1, 4096),
    ("audio_end_ms", 0, float("inf")),
    ("content_index", 0, float("inf")),
)


def available() -> bool:
    """True when the ``openai`` SDK is installed and checks are real."""
    return _IMPORT_ERROR is None


def _members(union: Any) -> tuple[Any, ...]:
    if typing.get_origin(union) is typing.Annotated:
        union = typing.get_args(union)[0]
    return typing.get_args(union)


@lru_cache(maxsize=2)
def _by_type(side: str) -> dict[str, Any]:
    union = RealtimeClientEvent if side == "client" else RealtimeServerEvent
    table: dict[str, Any] = {}
    for model in _members(union):
        for name in typing.get_args(model.model_fields["type"].annotation):
            table[name] = pydantic.TypeAdapter(model)
    return table


@lru_cache(maxsize=8)
def _adapter(model: Any) -> Any:
    return pydantic.TypeAdapter(model)


def client_event_types() -> list[str]:
    """Every client event type the SDK declares."""
    return sorted(_by_type("client"))


def server_event_types() -> list[str]:
    """Every server event type the SDK declares."""
    return sorted(_by_type("server"))


def _undeclared(obj: Any, path: str, out: list[str]) -> None:
    if isinstance(obj, pydantic.BaseModel):
        extra = obj.model_extra or {}
        for key in extra:
            where = f"{path}.{key}" if path else key
            out.append(f"{where}: key not declared by {type(obj).__name__}")
        for name in type(obj).model_fields:
            _undeclared(getattr(obj, name), f"{path}.{name}" if path else name, out)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _undeclared(item, f"{path}[{i}]", out)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            if isinstance(item, (pydantic.BaseModel, list, tuple)):
                _undeclared(item, f"{path}.{key}", out)


def _ranges(data: Any, path: str, out: list[str]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _ranges(value, f"{path}.{key}" if path else key, out)
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        for suffix, lo, hi in _RANGES:
            if path == suffix or path.endswith("." + suffix):
                if not lo <= data <= hi:
                    out.append(f"{path}: {data!r} is outside {lo:g}..{hi:g}")


def _validate(adapter: Any, data: Any, label: str) -> list[str]:
    try:
        raw = json.dumps(data)
    except (TypeError, ValueError) as exc:
        return [f"{label}: not JSON-serialisable: {exc}"]
    try:
        model = adapter.validate_json(raw, strict=True)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{label}.{loc}: {err['msg']}" if loc else f"{label}: {err['msg']}")
        return problems
    out: list[str] = []
    _undeclared(model, label, out)
    return out


def _check(side: str, event: Any) -> list[str]:
    if _IMPORT_ERROR is not None:
        return []
    if not isinstance(event, dict):
        return [f"{side} event is a {type(event).__name__}, not a JSON object"]
    kind = event.get("type")
    adapter = _by_type(side).get(kind) if isinstance(kind, str) else None
    if adapter is None:
        return [f"unknown {side} event type {kind!r}"]
    problems = _validate(adapter, event, kind)
    _ranges({k: v for k, v in event.items() if k != "type"}, "", problems)
    return [p if p.startswith(kind) else f"{kind}: {p}" for p in problems]


def check_client_event(event: Any) -> list[str]:
    """Problems of one client event (empty when it conforms); each names the key path."""
    return _check("client", event)


def check_server_event(event: Any) -> list[str]:
    """Problems of one server event (empty when it conforms)."""
    return _check("server", event)


def check_session(session: Any, label: str = "session") -> list[str]:
    """Problems of a realtime session config (e.g. the ``session`` of a client_secrets request)."""
    if _IMPORT_ERROR is not None:
        return []
    problems = _validate(_adapter(RealtimeSessionCreateRequest), session, label)
    _ranges(session, label, problems)
    return problems


class ConformanceError(AssertionError):
    """An event does not conform; the message lists every problem."""


def assert_client_event(event: Any) -> None:
    """Raise :class:`ConformanceError` when ``event`` does not conform."""
    problems = check_client_event(event)
    if problems:
        raise ConformanceError("; ".join(problems))


def assert_server_event(event: Any) -> None:
    """Raise :class:`ConformanceError` when ``event`` does not conform."""
    problems = check_server_event(event)
    if problems:
        raise ConformanceError("; ".join(problems))


__all__ = [
    "ConformanceError",
    "assert_client_event",
    "assert_server_event",
    "available",
    "check_client_event",
    "check_server_event",
    "check_session",
    "client_event_types",
    "server_event_types",
]
