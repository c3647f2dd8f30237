"""Server events of the realtime API (GA protocol) as small typed objects.

:func:`parse` turns each JSON event into a frozen dataclass holding the fields the device uses;
the conversation machine matches on these classes. Every type of the ``openai`` SDK's
``RealtimeServerEvent`` union has a parser here (a test checks it); events the device does not act
on become :class:`Notice`. A type that is not known at all becomes :class:`Unknown`, logged once at
debug level (the protocol grows).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """Base of every parsed server event."""

    type: str
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class ServerError(ServerEvent):
    """``error``: ``code`` falls back to the error's type."""

    code: str = "error"
    message: str = ""
    caused_by: str = ""  # event_id of the client event that caused it, when the server says


@dataclass(frozen=True, slots=True)
class SpeechStarted(ServerEvent):
    item_id: str = ""
    audio_start_ms: int = 0


@dataclass(frozen=True, slots=True)
class SpeechStopped(ServerEvent):
    item_id: str = ""
    audio_end_ms: int = 0


@dataclass(frozen=True, slots=True)
class InputCommitted(ServerEvent):
    item_id: str = ""


@dataclass(frozen=True, slots=True)
class InputTimeout(ServerEvent):
    """``input_audio_buffer.timeout_triggered``: the server VAD's idle timeout."""

    item_id: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted(ServerEvent):
    item_id: str = ""
    transcript: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptionFailed(ServerEvent):
    item_id: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class ResponseCreated(ServerEvent):
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class AudioDelta(ServerEvent):
    """``response.output_audio.delta`` with its PCM decoded."""

    response_id: str = ""
    item_id: str = ""
    pcm: bytes = b""


@dataclass(frozen=True, slots=True)
class AssistantTranscript(ServerEvent):
    """``response.output_audio_transcript.done`` / ``response.output_text.done``."""

    response_id: str = ""
    item_id: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallDone(ServerEvent):
    response_id: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ResponseDone(ServerEvent):
    response_id: str = ""
    status: str = ""  # completed, cancelled, failed, incomplete
    usage: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # what a failed response says about itself


@dataclass(frozen=True, slots=True)
class ItemRetrieved(ServerEvent):
    item: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemDeleted(ServerEvent):
    item_id: str = ""


@dataclass(frozen=True, slots=True)
class McpActivity(ServerEvent):
    """What a remote MCP server (a ``{"type": "mcp"}`` session tool, called by the cloud) is doing:
    ``mcp_list_tools.*``, ``response.mcp_call*`` and item events holding an MCP item. Only logged.

    ``kind`` is the item's type (mcp_list_tools, mcp_call, mcp_approval_request) for item events,
    empty for the progress events, which name the item by ``item_id`` only.
    """

    item_id: str = ""
    kind: str = ""
    server_label: str = ""
    name: str = ""
    arguments: str = ""
    tools: tuple[str, ...] = ()  # mcp_list_tools: the tools the server offers
    output: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class McpApprovalRequest(ServerEvent):
    """``response.output_item.done`` with an ``mcp_approval_request``: a remote call waits for a yes or no."""

    response_id: str = ""
    request_id: str = ""
    server_label: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Notice(ServerEvent):
    """A known event the conversation does not act on (logged at debug, kept for tracing)."""

    item_id: str = ""
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class Unknown(ServerEvent):
    """A type this device does not know."""


def _s(ev: dict[str, Any], key: str) -> str:
    value = ev.get(key)
    return value if isinstance(value, str) else ""


def _i(ev: dict[str, Any], key: str) -> int:
    value = ev.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _d(ev: dict[str, Any], key: str) -> dict[str, Any]:
    value = ev.get(key)
    return value if isinstance(value, dict) else {}


def _error(ev: dict[str, Any]) -> ServerError:
    err = _d(ev, "error")
    code = err.get("code") or err.get("type") or "error"
    return ServerError(
        ev["type"], _s(ev, "event_id"), code=str(code), message=str(err.get("message") or ""),
        caused_by=str(err.get("event_id") or ""),
    )


def _audio(ev: dict[str, Any]) -> AudioDelta:
    try:
        pcm = base64.b64decode(_s(ev, "delta"))
    except (binascii.Error, ValueError):
        _LOG.warning("response.output_audio.delta with undecodable audio ignored")
        pcm = b""
    return AudioDelta(ev["type"], _s(ev, "event_id"), _s(ev, "response_id"), _s(ev, "item_id"), pcm[: len(pcm) // 2 * 2])


def _response_done(ev: dict[str, Any]) -> ResponseDone:
    resp = _d(ev, "response")
    details = resp.get("status_details") if isinstance(resp.get("status_details"), dict) else {}
    err = details.get("error") if isinstance(details.get("error"), dict) else {}
    message = err.get("message") or err.get("code") or details.get("reason") or ""
    return ResponseDone(
        ev["type"], _s(ev, "event_id"), _s(resp, "id"), _s(resp, "status"), _d(resp, "usage"), str(message),
    )


def _notice(ev: dict[str, Any]) -> Notice:
    item = _d(ev, "item")
    return Notice(ev["type"], _s(ev, "event_id"), _s(ev, "item_id") or _s(item, "id"), _s(ev, "response_id"))


_MCP_ITEMS = ("mcp_list_tools", "mcp_call", "mcp_approval_request")
_MCP_PROGRESS = (
    "mcp_list_tools.in_progress", "mcp_list_tools.completed", "mcp_list_tools.failed", "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done", "response.mcp_call.in_progress", "response.mcp_call.completed",
    "response.mcp_call.failed",
)


def _mcp_progress(ev: dict[str, Any]) -> McpActivity:
    return McpActivity(ev["type"], _s(ev, "event_id"), _s(ev, "item_id"), arguments=_s(ev, "arguments"))


def _item_event(ev: dict[str, Any]) -> ServerEvent:
    """An item event: a Notice, unless its item is an MCP item."""
    item = _d(ev, "item")
    kind = _s(item, "type")
    if kind not in _MCP_ITEMS:
        return _notice(ev)
    if kind == "mcp_approval_request" and ev["type"] == "response.output_item.done":
        return McpApprovalRequest(ev["type"], _s(ev, "event_id"), _s(ev, "response_id"), _s(item, "id"),
                                  _s(item, "server_label"), _s(item, "name"), _s(item, "arguments"))
    tools = item.get("tools") if isinstance(item.get("tools"), list) else []
    error = _d(item, "error")
    return McpActivity(
        ev["type"], _s(ev, "event_id"), _s(item, "id"), kind, _s(item, "server_label"), _s(item, "name"),
        _s(item, "arguments"), tuple(_s(t, "name") for t in tools if isinstance(t, dict)), _s(item, "output"),
        str(error.get("message") or error.get("type") or "") if error else "",
    )


_Parser = Callable[[dict[str, Any]], ServerEvent]

PARSERS: dict[str, _Parser] = {
    "error": _error,
    "input_audio_buffer.speech_started": lambda e: SpeechStarted(e["type"], _s(e, "event_id"), _s(e, "item_id"), _i(e, "audio_start_ms")),
    "input_audio_buffer.speech_stopped": lambda e: SpeechStopped(e["type"], _s(e, "event_id"), _s(e, "item_id"), _i(e, "audio_end_ms")),
    "input_audio_buffer.committed": lambda e: InputCommitted(e["type"], _s(e, "event_id"), _s(e, "item_id")),
    "input_audio_buffer.timeout_triggered": lambda e: InputTimeout(e["type"], _s(e, "event_id"), _s(e, "item_id")),
    "conversation.item.input_audio_transcription.completed": lambda e: TranscriptionCompleted(
        e["type"], _s(e, "event_id"), _s(e, "item_id"), _s(e, "transcript").strip()),
    "conversation.item.input_audio_transcription.failed": lambda e: TranscriptionFailed(
        e["type"], _s(e, "event_id"), _s(e, "item_id"), str(_d(e, "error").get("message") or "")),
    "response.created": lambda e: ResponseCreated(e["type"], _s(e, "event_id"), _s(_d(e, "response"), "id")),
    "response.output_audio.delta": _audio,
    "response.output_audio_transcript.done": lambda e: AssistantTranscript(
        e["type"], _s(e, "event_id"), _s(e, "response_id"), _s(e, "item_id"), _s(e, "transcript").strip()),
    "response.output_text.done": lambda e: AssistantTranscript(
        e["type"], _s(e, "event_id"), _s(e, "response_id"), _s(e, "item_id"), _s(e, "text").strip()),
    "response.function_call_arguments.done": lambda e: FunctionCallDone(
        e["type"], _s(e, "event_id"), _s(e, "response_id"), _s(e, "call_id"), _s(e, "name"), _s(e, "arguments")),
    "response.done": _response_done,
    "conversation.item.retrieved": lambda e: ItemRetrieved(e["type"], _s(e, "event_id"), _d(e, "item")),
    "conversation.item.deleted": lambda e: ItemDeleted(e["type"], _s(e, "event_id"), _s(e, "item_id")),
    **{t: _item_event for t in ("conversation.item.added", "conversation.item.done", "response.output_item.added",
                                "response.output_item.done")},
    **{t: _mcp_progress for t in _MCP_PROGRESS},
}
# Known events the conversation does not act on.
NOTICES = (
    "session.created", "session.updated", "conversation.created", "conversation.item.created",
    "conversation.item.truncated",
    "conversation.item.input_audio_transcription.delta", "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.cleared", "input_audio_buffer.dtmf_event_received", "rate_limits.updated",
    "response.output_audio.done", "response.output_audio_transcript.delta", "response.content_part.added",
    "response.content_part.done", "response.function_call_arguments.delta", "response.output_text.delta",
    "output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared",
)
for _t in NOTICES:
    PARSERS.setdefault(_t, _notice)

_unknown_seen: set[str] = set()


def parse(ev: dict[str, Any]) -> ServerEvent:
    """The typed form of the server event ``ev``; malformed fields become empty values."""
    kind = ev.get("type")
    if not isinstance(kind, str):
        kind = ""
    parser = PARSERS.get(kind)
    if parser is None:
        if kind not in _unknown_seen:
            _unknown_seen.add(kind)
            _LOG.debug("server event type %r is not known here; ignored", kind)
        return Unknown(kind, _s(ev, "event_id"))
    return parser(ev)


__all__ = [
    "PARSERS",
    "AssistantTranscript",
    "AudioDelta",
    "FunctionCallDone",
    "InputCommitted",
    "InputTimeout",
    "ItemDeleted",
    "ItemRetrieved",
    "McpActivity",
    "McpApprovalRequest",
    "Notice",
    "ResponseCreated",
    "ResponseDone",
    "ServerError",
    "ServerEvent",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptionCompleted",
    "TranscriptionFailed",
    "Unknown",
    "parse",
]
