"""The OpenAI Realtime API (GA) as pure data: client event builders and server event parsers.

No I/O here. Builders return plain dicts ready for ``json.dumps``; every key they emit is one the
GA protocol declares (the server rejects a whole ``session.update`` holding an unknown key).
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from device.config import RealtimeConfig

SAMPLE_RATE = 24_000
"""The session's PCM rate, in and out (S16LE mono)."""
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
PCM_FORMAT: dict[str, Any] = {"type": "audio/pcm", "rate": SAMPLE_RATE}
_LOG = logging.getLogger(__name__)

_LANGUAGES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nb": "Norwegian", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code (the code itself when unknown)."""
    return _LANGUAGES.get(code.lower().split("-")[0], code)


def render_instructions(template: str, *, device: str, language: str, devices: str, now: datetime, tools: str = "") -> str:
    """Fill ``{{today}} {{time}} {{language}} {{device}} {{devices}} {{tools}}``; other ``{{x}}`` stay as written.

    (The config loader already rejects unknown placeholders in ``realtime.instructions``.)
    """
    values = {
        "today": f"{now:%A}, {now.day} {now:%B %Y}",
        "time": f"{now:%H:%M}",
        "language": language_name(language),
        "device": device,
        "devices": devices.strip() or "(no devices known)",
        "tools": tools.strip() or "(no tools)",
    }

    def sub(m: re.Match[str]) -> str:
        return values.get(m.group(1).lower(), m.group(0))

    return _PLACEHOLDER.sub(sub, template)


def turn_detection(rt: RealtimeConfig) -> dict[str, Any]:
    """The ``audio.input.turn_detection`` object for the config."""
    # With barge_in = "wake_word" the microphone is not streamed while the device speaks, so the
    # server must not cancel a reply on whatever residue it hears; "voice" relies on the server.
    interrupt = rt.barge_in == "voice"
    if rt.turn_detection == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": rt.eagerness, "create_response": True, "interrupt_response": interrupt}
    td: dict[str, Any] = {
        "type": "server_vad",
        "threshold": rt.vad_threshold,
        "prefix_padding_ms": rt.prefix_padding_ms,
        "silence_duration_ms": rt.silence_duration_ms,
        "create_response": True,
        "interrupt_response": interrupt,
    }
    if rt.idle_timeout_ms > 0:
        td["idle_timeout_ms"] = rt.idle_timeout_ms
    return td


def tools_summary(tools: list[dict[str, Any]]) -> str:
    """The ``{{tools}}`` text: one line per tool, name and the first sentence of its description."""
    lines = []
    for t in tools:
        if t.get("type") == "mcp":
            allowed = t.get("allowed_tools")
            what = t.get("server_description") or "remote MCP server"
            lines.append(f"- {t['server_label']} (MCP server: {what})" + (f": {', '.join(allowed)}" if isinstance(allowed, list) else ""))
        else:
            desc = str(t.get("description") or "").strip()
            first = re.split(r"(?<=[.!?])\s", desc, maxsplit=1)[0] if desc else ""
            lines.append(f"- {t.get('name')}" + (f": {first}" if first else ""))
    return "\n".join(lines)


# ---- session keys passed through from [realtime] only when configured ---------------------------

_TOOL_CHOICE_MODES = ("auto", "none", "required")


def tool_choice(rt: RealtimeConfig, tools: list[dict[str, Any]]) -> str | dict[str, Any]:
    """``tool_choice``: a mode, or ``{"type": "function", "name": ...}`` when that function is offered."""
    choice = rt.tool_choice
    if choice in _TOOL_CHOICE_MODES:
        return choice
    if any(t.get("type") == "function" and t.get("name") == choice for t in tools):
        return {"type": "function", "name": choice}
    # The server would reject the whole session.update for a function it was not given.
    _LOG.warning("realtime.tool_choice names %r, which is not among the session's tools; using \"auto\"", choice)
    return "auto"


def transcription_prompt(rt: RealtimeConfig, household: str) -> str:
    """The transcription prompt: the configured text, or with ``"auto"`` the household's words."""
    return household if rt.transcription_prompt == "auto" else rt.transcription_prompt


def passthrough(rt: RealtimeConfig) -> dict[str, Any]:
    """``truncation``, ``tracing``, ``include`` and ``prompt`` as the GA session spells them; unset keys left out."""
    out: dict[str, Any] = {}
    if rt.truncation is not None:
        if isinstance(rt.truncation, str):
            out["truncation"] = rt.truncation
        else:
            trunc: dict[str, Any] = {"type": "retention_ratio", "retention_ratio": float(rt.truncation["retention_ratio"])}
            if "post_instructions_tokens" in rt.truncation:
                trunc["token_limits"] = {"post_instructions": int(rt.truncation["post_instructions_tokens"])}
            out["truncation"] = trunc
    if rt.tracing is not None:
        out["tracing"] = rt.tracing if isinstance(rt.tracing, str) else dict(rt.tracing)
    if rt.include:
        out["include"] = list(rt.include)
    if rt.prompt is not None:
        prompt: dict[str, Any] = {"id": rt.prompt["id"]}
        if rt.prompt.get("version"):
            prompt["version"] = rt.prompt["version"]
        if rt.prompt.get("variables"):
            prompt["variables"] = dict(rt.prompt["variables"])
        out["prompt"] = prompt
    return out


def session_config(
    rt: RealtimeConfig, *, instructions: str, tools: list[dict[str, Any]], household: str = ""
) -> dict[str, Any]:
    """The GA ``session`` object (also usable as the session of a client_secrets request).

    ``household``: the words for the ``"auto"`` transcription prompt (wake word, device and area names).
    """
    audio_in: dict[str, Any] = {"format": dict(PCM_FORMAT)}
    if rt.transcription_model:
        audio_in["transcription"] = {"model": rt.transcription_model, "language": rt.language}
        prompt = transcription_prompt(rt, household)
        if prompt:
            audio_in["transcription"]["prompt"] = prompt
    if rt.noise_reduction != "off":
        audio_in["noise_reduction"] = {"type": rt.noise_reduction}
    audio_in["turn_detection"] = turn_detection(rt)
    session: dict[str, Any] = {
        "type": "realtime",
        "model": rt.model,
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": audio_in,
            "output": {"format": dict(PCM_FORMAT), "voice": rt.voice, "speed": rt.speed},
        },
        "tools": list(tools),
        "tool_choice": tool_choice(rt, tools),
    }
    if rt.max_output_tokens == "inf" or (isinstance(rt.max_output_tokens, int) and rt.max_output_tokens > 0):
        session["max_output_tokens"] = rt.max_output_tokens
    session.update(passthrough(rt))
    return session


def session_update(
    rt: RealtimeConfig, *, instructions: str, tools: list[dict[str, Any]], household: str = ""
) -> dict[str, Any]:
    """``session.update`` built from the config, with GA keys only."""
    return {"type": "session.update", "session": session_config(rt, instructions=instructions, tools=tools, household=household)}


def tools_update(tools: list[dict[str, Any]], choice: str | dict[str, Any] = "auto") -> dict[str, Any]:
    """``session.update`` changing only the tools (safe mid-session: no voice, no model)."""
    return {"type": "session.update", "session": {"type": "realtime", "tools": list(tools), "tool_choice": choice}}


def audio_append(pcm24k: bytes) -> dict[str, Any]:
    """``input_audio_buffer.append`` of S16LE 24 kHz mono PCM."""
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24k).decode("ascii")}


def audio_commit() -> dict[str, Any]:
    return {"type": "input_audio_buffer.commit"}


def audio_clear() -> dict[str, Any]:
    return {"type": "input_audio_buffer.clear"}


def response_create(instructions: str | None = None) -> dict[str, Any]:
    """``response.create``; ``instructions`` override the session's for this one response."""
    if instructions is None:
        return {"type": "response.create"}
    return {"type": "response.create", "response": {"instructions": instructions}}


def response_create_with(
    instructions: str | None = None, *, tool_choice: str | None = None, conversation: str | None = None,
) -> dict[str, Any]:
    """``response.create`` with per-response overrides; ``conversation="none"`` keeps the response
    out of the conversation (the model neither sees earlier turns through it nor remembers it)."""
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if tool_choice is not None:
        response["tool_choice"] = tool_choice
    if conversation is not None:
        response["conversation"] = conversation
    return {"type": "response.create", "response": response} if response else {"type": "response.create"}


def manual_turns() -> dict[str, Any]:
    """``session.update`` switching the server's turn detection off: the device commits each turn
    (``input_audio_buffer.commit``) and asks for the answer (``response.create``) itself."""
    return {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}


def item_retrieve(item_id: str) -> dict[str, Any]:
    """``conversation.item.retrieve``: the server answers with conversation.item.retrieved."""
    return {"type": "conversation.item.retrieve", "item_id": item_id}


def item_delete(item_id: str) -> dict[str, Any]:
    """``conversation.item.delete``: the server answers with conversation.item.deleted."""
    return {"type": "conversation.item.delete", "item_id": item_id}


def response_cancel() -> dict[str, Any]:
    return {"type": "response.cancel"}


def item_truncate(item_id: str, content_index: int, audio_end_ms: int) -> dict[str, Any]:
    """``conversation.item.truncate``: the listener heard ``audio_end_ms`` of that item's audio."""
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": int(content_index),
        "audio_end_ms": max(0, int(audio_end_ms)),
    }


def function_call_output(call_id: str, output_json: str) -> dict[str, Any]:
    """The answer to a function call (send ``response.create`` after it)."""
    return {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": call_id, "output": output_json}}


def mcp_approval_response(request_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
    """``conversation.item.create`` answering a remote MCP server's ``mcp_approval_request``.

    The item's id is derived from the request's (ids are at most 32 characters), so a builder
    without a random source gives each answer its own id.
    """
    item: dict[str, Any] = {
        "type": "mcp_approval_response",
        "id": "mcpapr_" + request_id[-25:],
        "approval_request_id": request_id,
        "approve": approve,
    }
    if reason:
        item["reason"] = reason
    return {"type": "conversation.item.create", "item": item}


def user_text(text: str) -> dict[str, Any]:
    """``conversation.item.create`` with a user text message."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


# ---- server events -------------------------------------------------------------------------

def decode_audio_delta(event: dict[str, Any]) -> bytes:
    """PCM bytes of a ``response.output_audio.delta`` (empty when it carries none)."""
    delta = event.get("delta")
    if not isinstance(delta, str) or not delta:
        return b""
    return base64.b64decode(delta)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A complete function call from ``response.function_call_arguments.done``."""

    call_id: str
    name: str
    arguments: str
    item_id: str
    response_id: str


def parse_function_call(event: dict[str, Any]) -> FunctionCall:
    """Parse ``response.function_call_arguments.done``; missing fields become empty strings."""
    return FunctionCall(
        call_id=str(event.get("call_id") or ""),
        name=str(event.get("name") or ""),
        arguments=str(event.get("arguments") or ""),
        item_id=str(event.get("item_id") or ""),
        response_id=str(event.get("response_id") or ""),
    )


@dataclass(frozen=True, slots=True)
class ServerError:
    """The payload of an ``error`` event."""

    type: str
    code: str
    message: str
    param: str
    event_id: str  # the client event that caused it, when the server knows

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        return f"{self.type}/{self.code or '-'}: {self.message}{where}"


def parse_error(event: dict[str, Any]) -> ServerError:
    err = event.get("error") if isinstance(event.get("error"), dict) else {}
    return ServerError(
        type=str(err.get("type") or "error"),
        code=str(err.get("code") or ""),
        message=str(err.get("message") or ""),
        param=str(err.get("param") or ""),
        event_id=str(err.get("event_id") or ""),
    )


@dataclass(frozen=True, slots=True)
class ResponseSummary:
    """What ``response.done`` says: status and token usage."""

    response_id: str
    status: str
    reason: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    audio_out_tokens: int

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"{self.status}{why}, tokens in {self.input_tokens} out {self.output_tokens} "
            f"(audio {self.audio_out_tokens}) total {self.total_tokens}"
        )


def parse_response_done(event: dict[str, Any]) -> ResponseSummary:
    resp = event.get("response") if isinstance(event.get("response"), dict) else {}
    usage = resp.get("usage") if isinstance(resp.get("usage"), dict) else {}
    details = resp.get("status_details") if isinstance(resp.get("status_details"), dict) else {}
    out_details = usage.get("output_token_details") if isinstance(usage.get("output_token_details"), dict) else {}
    return ResponseSummary(
        response_id=str(resp.get("id") or ""),
        status=str(resp.get("status") or ""),
        reason=str(details.get("reason") or ""),
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        total_tokens=int(usage.get("total_tokens") or 0),
        audio_out_tokens=int(out_details.get("audio_tokens") or 0),
    )


def pcm_ms(pcm24k_bytes: int) -> int:
    """Milliseconds of S16LE 24 kHz mono audio in ``pcm24k_bytes`` bytes."""
    return pcm24k_bytes // BYTES_PER_MS


__all__ = [
    "BYTES_PER_MS",
    "PCM_FORMAT",
    "SAMPLE_RATE",
    "FunctionCall",
    "ResponseSummary",
    "ServerError",
    "audio_append",
    "audio_clear",
    "audio_commit",
    "decode_audio_delta",
    "function_call_output",
    "item_truncate",
    "language_name",
    "mcp_approval_response",
    "parse_error",
    "parse_function_call",
    "parse_response_done",
    "passthrough",
    "pcm_ms",
    "render_instructions",
    "response_cancel",
    "response_create",
    "session_config",
    "session_update",
    "tool_choice",
    "tools_summary",
    "tools_update",
    "transcription_prompt",
    "turn_detection",
    "user_text",
]
