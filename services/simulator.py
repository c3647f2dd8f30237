"""A local stand-in for the OpenAI Realtime API (GA protocol), for tests and the offline demo.

One aiohttp server on loopback serves

* ``POST /v1/realtime/client_secrets``: mints ``ek_`` keys; needs ``Authorization: Bearer <api key>``;
* ``GET /v1/realtime?model=...``: the realtime websocket; needs ``Authorization: Bearer <ek_ it
  minted>`` and refuses the API key itself and any ``OpenAI-Beta`` header (the beta protocol).

On the socket it behaves like the server as far as a speaker needs: energy VAD on the input audio
(speech_started/stopped, committed, item added, optional transcription), scripted replies spoken
with espeak-ng at 24 kHz (a tone without it) and paced in real time or faster, scripted function
calls, cancel, truncate (rejected past the audio sent, like the real server), session.update
(rejected whole on an unknown key). Every client event is checked with
:mod:`services.conformance`; problems are recorded in ``violations`` and answered with an ``error``
event. Failure modes for tests: client_secrets 401/429/500/timeout, handshake refusal, error
events, a socket dropped mid-reply, a server gone silent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import math
import re
import secrets
import shutil
import subprocess
import threading
import time
import wave
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from aiohttp import WSMsgType, web

from services import conformance

_LOG = logging.getLogger("simulator")

RATE = 24_000
BYTES_PER_MS = RATE * 2 // 1000
PCM = {"type": "audio/pcm", "rate": RATE}
DEFAULT_REPLY = "Sure. It is sunny and twenty one degrees."
DEFAULT_AFTER_CALL = "Done."
_VAD_CHUNK_MS = 10
_SPEECH_START_MS = 60  # this much speech in a row starts a turn


# ---- scripting ---------------------------------------------------------------------------------

@dataclass
class Turn:
    """What the simulated model does for one response.

    ``say``: spoken reply. ``call``: name of a function to call first (with ``arguments``, a dict
    or a raw string so tests can send bad JSON); after the client's function_call_output and
    response.create it says ``then``. ``transcript``: the input transcription reported for the
    user's speech that led to this turn. ``fail``: "error" (an error event instead of a reply),
    "drop" (the socket drops after ``drop_after_ms`` of reply audio), "silent" (the server stops
    answering anything).
    """

    say: str = ""
    call: str = ""
    arguments: dict[str, Any] | str = field(default_factory=dict)
    then: str = ""
    transcript: str = ""
    fail: Literal["", "error", "drop", "silent"] = ""
    drop_after_ms: int = 300
    # Remote MCP (a {"type": "mcp"} session tool): the "server" calls ``mcp`` ("label.tool", or a
    # tool of the session's first MCP server) with ``arguments`` before saying ``say``;
    # ``mcp_fail`` makes the call fail. The tools a label offers come from ``mcp_servers``.
    mcp: str = ""
    mcp_fail: bool = False


# ---- reply audio --------------------------------------------------------------------------------

@lru_cache(maxsize=128)
def speech_pcm(text: str) -> bytes:
    """``text`` spoken as S16LE 24 kHz mono: espeak-ng when installed, else a tone pattern."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe and text.strip():
        try:
            wav = subprocess.run([exe, "-v", "en-us", "-s", "170", "--stdout", text], capture_output=True, timeout=30, check=True).stdout
            return _wav_to_pcm24k(wav)
        except (OSError, subprocess.SubprocessError, wave.Error, ValueError) as exc:
            _LOG.warning("espeak-ng failed (%s); replying with a tone", exc)
    return tone_pcm(max(300, 60 * len(text)))


def _wav_to_pcm24k(wav: bytes) -> bytes:
    import numpy as np

    with wave.open(io.BytesIO(wav)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(1 << 30)
    if width != 2:
        raise ValueError(f"espeak-ng wrote {8 * width}-bit audio")
    samples = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], dtype="<i2").reshape(-1, channels)
    mono = samples.mean(axis=1).astype(np.float32) / 32768.0
    if rate != RATE:
        try:
            import soxr

            mono = soxr.resample(mono, rate, RATE, quality="HQ")
        except ImportError:
            n = int(len(mono) * RATE / rate)
            mono = np.interp(np.arange(n) * rate / RATE, np.arange(len(mono)), mono).astype(np.float32)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def tone_pcm(ms: int, freq: float = 440.0) -> bytes:
    """A syllable-like 440 Hz pattern of ``ms`` milliseconds."""
    import numpy as np

    t = np.arange(ms * RATE // 1000) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * 4 * t - math.pi / 2)
    return (0.3 * envelope * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2").tobytes()


def _rms(chunk: bytes) -> float:
    import numpy as np

    x = np.frombuffer(chunk, dtype="<i2").astype(np.float32)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _mask(key: str) -> str:
    return key[:5] + "..." if len(key) > 8 else "***"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "turn_detection":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def default_session(model: str) -> dict[str, Any]:
    """The session the server starts with (what session.created shows)."""
    return {
        "type": "realtime",
        "model": model,
        "instructions": "You are a helpful assistant.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": dict(PCM),
                "noise_reduction": None,
                "transcription": None,
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200,
                    "create_response": True, "interrupt_response": True,
                },
            },
            "output": {"format": dict(PCM), "voice": "marin", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
    }


# ---- one websocket session ----------------------------------------------------------------------

@dataclass
class _Item:
    id: str
    role: str
    kind: str  # "message" | "function_call" | "function_call_output"
    audio_sent_ms: int = 0
    text: str = ""
    truncated_ms: int | None = None


class _Response:
    def __init__(self, rid: str, turn: Turn, text: str) -> None:
        self.id = rid
        self.turn = turn
        self.text = text
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.item_id = ""
        self.status = "in_progress"
        self.audio_ms = 0
        self.started_at = time.monotonic()
        self.first_audio_at: float | None = None
        self.done_at: float | None = None
        self.out_of_band = False  # response.create with conversation "none": no items join the conversation


class SimSession:
    """One websocket connection as the server sees it (tests read its records)."""

    def __init__(self, sim: RealtimeSimulator, ws: web.WebSocketResponse, request: web.Request, key: str, model: str, minted_session: dict[str, Any]) -> None:
        self.sim = sim
        self.ws = ws
        self._request = request
        self.key = key
        self.model = model
        self.headers = dict(request.headers)
        """The handshake's request headers (tests check what the client sent)."""
        self.loop = asyncio.get_running_loop()
        self.opened_at = time.monotonic()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.client_events: list[dict[str, Any]] = []
        self.client_times: list[float] = []
        self.server_events: list[dict[str, Any]] = []
        self.server_times: list[float] = []  # time.monotonic() when each server event was sent
        self.violations: list[str] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.truncations: list[tuple[str, int]] = []
        self.function_outputs: list[dict[str, Any]] = []
        self.responses: list[_Response] = []
        self.speech: list[tuple[int, int]] = []  # (audio_start_ms, audio_end_ms) per detected turn
        self.config = _merge(default_session(model), minted_session)
        self.items: dict[str, _Item] = {}
        self.first_append_at: float | None = None
        self.silent = False
        self.fuzzed = 0
        self._audio = bytearray()
        self._pending = b""
        self._buffer_start = 0  # session audio position (bytes) where the uncommitted buffer starts
        self._speaking = False
        self._speech_run = 0
        self._silence_run = 0
        self._run_start = 0
        self._last_speech_end = 0
        self._user_item = ""
        self._speech_start_ms = 0
        self._last_item: str | None = None
        self._active: _Response | None = None
        self._after_call: dict[str, str] = {}
        self._audio_out = False
        self._idle_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._mcp_listed: set[str] = set()

    # -- records --
    @property
    def audio_in(self) -> bytes:
        """Every byte of input audio appended during the session (24 kHz S16LE mono)."""
        return bytes(self._audio)

    @property
    def audio_in_ms(self) -> int:
        """Milliseconds of input audio received (cheap, for wait predicates)."""
        return len(self._audio) // BYTES_PER_MS

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def client_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.client_events]

    def events_of(self, kind: str, side: Literal["client", "server"] = "client") -> list[dict[str, Any]]:
        events = self.client_events if side == "client" else self.server_events
        return [e for e in events if e.get("type") == kind]

    def audio_sent_ms(self, item_id: str) -> int:
        item = self.items.get(item_id)
        return item.audio_sent_ms if item else 0

    # -- thread-safe controls for tests --
    def inject(self, event: dict[str, Any]) -> None:
        """Send ``event`` to the client (thread-safe)."""
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.send(dict(event))))

    def fuzz(self, messages: list[str]) -> None:
        """Send raw text frames as they are (thread-safe): malformed or out-of-order events for
        robustness tests. They bypass the conformance check and are not recorded as server events;
        ``fuzzed`` counts those sent."""

        async def send_all() -> None:
            for i, text in enumerate(messages):
                if self.ws.closed:
                    return
                with contextlib.suppress(ConnectionError, RuntimeError):
                    async with self._send_lock:
                        await self.ws.send_str(text)
                self.fuzzed += 1
                if i % 100 == 99:
                    await asyncio.sleep(0)  # let the session's own handlers run in between

        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(send_all()))

    def drop(self) -> None:
        """Drop the TCP connection without a close frame (thread-safe)."""
        self.loop.call_soon_threadsafe(self._abort)

    def go_silent(self) -> None:
        """Stop answering anything (thread-safe)."""
        self.loop.call_soon_threadsafe(setattr, self, "silent", True)

    # -- plumbing --
    def _abort(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()
        task = self._active.task if self._active is not None else None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def send(self, event: dict[str, Any]) -> None:
        event.setdefault("event_id", _new_id("event"))
        problems = conformance.check_server_event(event)
        if problems:
            self.sim.server_violations.extend(problems)
            _LOG.error("simulator sent a non-conformant event: %s", "; ".join(problems))
        self.server_events.append(event)
        self.server_times.append(time.monotonic())
        if self.ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(json.dumps(event))

    async def error(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None, etype: str = "invalid_request_error") -> None:
        err: dict[str, Any] = {"type": etype, "code": code, "message": message}
        if param:
            err["param"] = param
        if event_id:
            err["event_id"] = event_id
        event = {"type": "error", "error": err}
        self.errors_sent.append(err)
        _LOG.info("error -> client: %s %s", code, message)
        await self.send(event)

    async def run(self) -> None:
        await self.send({"type": "session.created", "session": self.config})
        limit = asyncio.get_running_loop().call_later(self.sim.max_session_s, lambda: asyncio.ensure_future(self._expire()))
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await self.error("invalid_event", "binary frames are not supported; send JSON text")
                    continue
                try:
                    event = json.loads(msg.data)
                except json.JSONDecodeError:
                    await self.error("invalid_json", "the message is not valid JSON")
                    continue
                await self._handle(event)
        finally:
            limit.cancel()
            self.closed_at = time.monotonic()
            self.close_code = self.ws.close_code
            for task in (self._idle_task, self._active.task if self._active else None):
                if task is not None:
                    task.cancel()

    async def _expire(self) -> None:
        minutes = self.sim.max_session_s / 60
        await self.error("session_expired", f"Your session hit the maximum duration of {minutes:g} minutes.")
        await self.ws.close(code=1000, message=b"session expired")

    async def _handle(self, event: Any) -> None:
        self.client_events.append(event if isinstance(event, dict) else {"type": None, "raw": event})
        self.client_times.append(time.monotonic())
        kind = event.get("type") if isinstance(event, dict) else None
        if kind != "input_audio_buffer.append":
            _LOG.debug("client -> %s", kind)
        problems = conformance.check_client_event(event)
        event_id = event.get("event_id") if isinstance(event, dict) and isinstance(event.get("event_id"), str) else None
        if problems:
            self.violations.extend(problems)
            self.sim.violations.extend(problems)
            _LOG.warning("non-conformant client event: %s", "; ".join(problems))
            if not self.silent:
                undeclared = [p for p in problems if "not declared" in p]
                code = "unknown_parameter" if undeclared else "invalid_value"
                first = (undeclared or problems)[0]
                await self.error(code, "; ".join(problems), param=first.split(":")[0], event_id=event_id)
            return
        if self.silent:
            if kind == "input_audio_buffer.append":
                self._audio.extend(base64.b64decode(event["audio"]))
            return
        handler = getattr(self, "_on_" + str(kind).replace(".", "_"), None)
        if handler is None:
            await self.error("unsupported_event", f"the simulator does not implement {kind}", event_id=event_id)
            return
        await handler(event, event_id)

    # -- client events --
    async def _on_session_update(self, event: dict[str, Any], event_id: str | None) -> None:
        session = event["session"]
        if session.get("type") != "realtime":
            await self.error("invalid_value", "only realtime sessions are simulated", param="session.type", event_id=event_id)
            return
        new_voice = (session.get("audio") or {}).get("output", {}) or {}
        if "voice" in new_voice and self._audio_out and new_voice["voice"] != self.config["audio"]["output"]["voice"]:
            await self.error("cannot_update_voice", "Cannot update a conversation's voice if assistant audio is present.",
                             param="session.audio.output.voice", event_id=event_id)
            return
        self.config = _merge(self.config, session)
        await self.send({"type": "session.updated", "session": self.config})
        for tool in session.get("tools") or []:
            if tool.get("type") == "mcp" and tool.get("server_label") not in self._mcp_listed:
                await self._list_mcp_tools(tool)

    async def _on_input_audio_buffer_append(self, event: dict[str, Any], event_id: str | None) -> None:
        try:
            pcm = base64.b64decode(event["audio"], validate=True)
        except ValueError:
            await self.error("invalid_value", "audio is not valid base64", param="audio", event_id=event_id)
            return
        if self.first_append_at is None:
            self.first_append_at = time.monotonic()
        self._audio.extend(pcm)
        await self._vad(pcm)

    async def _on_input_audio_buffer_commit(self, event: dict[str, Any], event_id: str | None) -> None:
        size = len(self._audio) - self._buffer_start
        if size < 100 * BYTES_PER_MS:
            await self.error("input_audio_buffer_commit_empty",
                             f"Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                             f"but buffer only has {size / BYTES_PER_MS:.2f}ms of audio.", event_id=event_id)
            return
        await self._commit(len(self._audio))

    async def _on_input_audio_buffer_clear(self, event: dict[str, Any], event_id: str | None) -> None:
        self._buffer_start = len(self._audio)
        self._speaking = False
        self._speech_run = self._silence_run = 0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _on_output_audio_buffer_clear(self, event: dict[str, Any], event_id: str | None) -> None:
        await self.error("invalid_value", "output_audio_buffer.clear is only for WebRTC/SIP connections", event_id=event_id)

    async def _on_conversation_item_create(self, event: dict[str, Any], event_id: str | None) -> None:
        item = dict(event["item"])
        item.setdefault("id", _new_id("item"))
        item["object"] = "realtime.item"
        item["status"] = "completed"
        kind = item["type"]
        if kind == "function_call_output":
            call_id = item["call_id"]
            if call_id not in self._after_call:
                await self.error("invalid_value", f"no function call with call_id {call_id!r} awaits an output",
                                 param="item.call_id", event_id=event_id)
                return
            self.function_outputs.append(item)
        self.items[item["id"]] = _Item(item["id"], item.get("role", ""), kind)
        await self.send({"type": "conversation.item.added", "previous_item_id": self._last_item, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": self._last_item, "item": item})
        self._last_item = item["id"]

    async def _on_conversation_item_truncate(self, event: dict[str, Any], event_id: str | None) -> None:
        item = self.items.get(event["item_id"])
        end = event["audio_end_ms"]
        if item is None:
            await self.error("item_truncate_invalid_item_id", f"Item with item_id not found: {event['item_id']}",
                             param="item_id", event_id=event_id)
            return
        if item.role != "assistant" or event["content_index"] != 0:
            await self.error("invalid_value", "only the audio of an assistant message can be truncated",
                             param="content_index", event_id=event_id)
            return
        if end > item.audio_sent_ms:
            await self.error("invalid_value", f"Audio content of {item.audio_sent_ms}ms is already shorter than {end}ms",
                             param="audio_end_ms", event_id=event_id)
            return
        item.truncated_ms = end
        self.truncations.append((item.id, end))
        _LOG.info("truncated %s at %d ms of %d ms sent", item.id, end, item.audio_sent_ms)
        await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0, "audio_end_ms": end})

    async def _on_conversation_item_delete(self, event: dict[str, Any], event_id: str | None) -> None:
        if self.items.pop(event["item_id"], None) is None:
            await self.error("invalid_value", f"Item with item_id not found: {event['item_id']}", param="item_id", event_id=event_id)
            return
        await self.send({"type": "conversation.item.deleted", "item_id": event["item_id"]})

    async def _on_conversation_item_retrieve(self, event: dict[str, Any], event_id: str | None) -> None:
        await self.error("unsupported_event", "conversation.item.retrieve is not simulated", event_id=event_id)

    async def _on_response_create(self, event: dict[str, Any], event_id: str | None) -> None:
        if self._active is not None:
            await self.error("conversation_already_has_active_response",
                             f"Conversation already has an active response in progress: {self._active.id}. "
                             "Wait until the response is finished before creating a new one.", event_id=event_id)
            return
        answered = [c for c, _ in self._after_call.items() if any(o["call_id"] == c for o in self.function_outputs)]
        if answered:
            text = self._after_call.pop(answered[0])
            self._start_response(Turn(say=text))
            return
        instructions = ((event.get("response") or {}).get("instructions")) or ""
        out_of_band = (event.get("response") or {}).get("conversation") == "none"
        self._start_response(self.sim.next_turn(instructions), out_of_band=out_of_band)

    async def _on_response_cancel(self, event: dict[str, Any], event_id: str | None) -> None:
        if self._active is None:
            await self.error("response_cancel_not_active", "Cancellation failed: no active response found", event_id=event_id)
            return
        self._active.cancel_reason = "client_cancelled"

    # -- VAD --
    def _turn_detection(self) -> dict[str, Any] | None:
        return (self.config.get("audio") or {}).get("input", {}).get("turn_detection")

    def _silence_ms(self, td: dict[str, Any]) -> int:
        if td.get("type") == "semantic_vad":
            return {"low": 1500, "medium": 800, "auto": 800, "high": 400}.get(td.get("eagerness") or "auto", 800)
        return int(td.get("silence_duration_ms") or 500)

    async def _vad(self, pcm: bytes) -> None:
        td = self._turn_detection()
        data = self._pending + pcm
        step = _VAD_CHUNK_MS * BYTES_PER_MS
        usable = len(data) // step * step
        self._pending = data[usable:]
        if td is None:
            return
        threshold = self.sim.vad_rms if self.sim.vad_rms is not None else 32768 * 0.1 * float(td.get("threshold", 0.5) or 0.5) ** 2
        pos = len(self._audio) - len(self._pending) - usable  # session byte offset of data[0]
        for off in range(0, usable, step):
            loud = _rms(data[off:off + step]) >= threshold
            end = pos + off + step
            if not self._speaking:
                if loud:
                    if self._speech_run == 0:
                        self._run_start = end - step
                    self._speech_run += _VAD_CHUNK_MS
                    if self._speech_run >= _SPEECH_START_MS:
                        await self._speech_started(td, self._run_start)
                else:
                    self._speech_run = 0
            else:
                if loud:
                    self._silence_run = 0
                    self._last_speech_end = end
                else:
                    self._silence_run += _VAD_CHUNK_MS
                    if self._silence_run >= self._silence_ms(td):
                        await self._speech_stopped(td, end)

    async def _speech_started(self, td: dict[str, Any], run_start: int) -> None:
        self._speaking = True
        self._silence_run = 0
        self._last_speech_end = run_start
        self._user_item = _new_id("item")
        pad = int(td.get("prefix_padding_ms") or 0) * BYTES_PER_MS
        start_ms = max(self._buffer_start, run_start - pad) // BYTES_PER_MS
        self._speech_start_ms = start_ms
        if self._idle_task is not None:
            self._idle_task.cancel()
        _LOG.info("speech started at %d ms", start_ms)
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": start_ms, "item_id": self._user_item})
        if self._active is not None and td.get("interrupt_response", True):
            self._active.cancel_reason = "turn_detected"

    async def _speech_stopped(self, td: dict[str, Any], end: int) -> None:
        self._speaking = False
        self._speech_run = 0
        end_ms = end // BYTES_PER_MS
        self.speech.append((self._speech_start_ms, end_ms))
        _LOG.info("speech stopped at %d ms", end_ms)
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": self._user_item})
        await self._commit(end, item_id=self._user_item)
        if td.get("create_response", True) and self._active is None:
            self._start_response(self.sim.next_turn())

    async def _commit(self, end: int, item_id: str | None = None) -> None:
        item_id = item_id or _new_id("item")
        seconds = (end - self._buffer_start) / (BYTES_PER_MS * 1000)
        self._buffer_start = end
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": self._last_item, "item_id": item_id})
        item = {"id": item_id, "type": "message", "role": "user", "object": "realtime.item", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.items[item_id] = _Item(item_id, "user", "message")
        await self.send({"type": "conversation.item.added", "previous_item_id": self._last_item, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": self._last_item, "item": item})
        self._last_item = item_id
        transcription = (self.config.get("audio") or {}).get("input", {}).get("transcription")
        if transcription and transcription.get("model"):
            # what the person "said" is scripted on the turn that will answer it
            upcoming = self.sim.script[0] if self.sim.script else None
            text = (upcoming.transcript if upcoming else "") or self.sim.default_transcript
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id, "content_index": 0, "delta": text})
            await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id, "content_index": 0,
                             "transcript": text, "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    # -- responses --
    def _start_response(self, turn: Turn, *, out_of_band: bool = False) -> None:
        if turn.fail == "silent":
            _LOG.info("scripted: going silent")
            self.silent = True
            return
        resp = _Response(_new_id("resp"), turn, turn.say or (DEFAULT_REPLY if not turn.call else ""))
        resp.out_of_band = out_of_band
        self._active = resp
        self.responses.append(resp)
        if self._idle_task is not None:
            self._idle_task.cancel()
        resp.task = asyncio.get_running_loop().create_task(self._respond(resp))

    def _response_obj(self, resp: _Response, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": resp.id, "object": "realtime.response", "status": status, "output": output,
            "conversation_id": None if resp.out_of_band else "conv_sim", "output_modalities": ["audio"],
            "audio": {"output": {"format": dict(PCM), "voice": self.config["audio"]["output"]["voice"]}},
            "max_output_tokens": self.config.get("max_output_tokens", "inf"),
            "metadata": None,
        }
        if status == "cancelled":
            obj["status_details"] = {"type": "cancelled", "reason": resp.cancel_reason}
        elif status == "failed":
            obj["status_details"] = {"type": "failed", "error": {"type": "server_error", "code": "simulated"}}
        if usage is not None:
            obj["usage"] = usage
        return obj

    @staticmethod
    def _usage(text: str, audio_ms: int, input_ms: int) -> dict[str, Any]:
        audio_out = audio_ms // 50  # ~20 audio tokens per second
        text_out = max(1, len(text) // 4)
        audio_in = input_ms // 100
        text_in = 120
        return {
            "total_tokens": audio_out + text_out + audio_in + text_in,
            "input_tokens": audio_in + text_in,
            "output_tokens": audio_out + text_out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    async def _respond(self, resp: _Response) -> None:
        try:
            await self.send({"type": "response.created", "response": self._response_obj(resp, "in_progress", [])})
            turn = resp.turn
            if turn.fail == "error":
                resp.status = "failed"
                await self.error("server_error", "The server had an error while processing your request. (simulated)", etype="server_error")
                await self.send({"type": "response.done", "response": self._response_obj(resp, "failed", [], self._usage("", 0, 0))})
                return
            if turn.call:
                await self._respond_call(resp)
            else:
                if turn.mcp:
                    await self._respond_mcp(resp)
                await self._respond_audio(resp)
        except asyncio.CancelledError:
            pass
        finally:
            resp.done_at = time.monotonic()
            if self._active is resp:
                self._active = None
            self._arm_idle(resp)

    async def _respond_call(self, resp: _Response) -> None:
        turn = resp.turn
        call_id = _new_id("call")
        item_id = _new_id("item")
        resp.item_id = item_id
        args = turn.arguments if isinstance(turn.arguments, str) else json.dumps(turn.arguments)
        item = {"id": item_id, "type": "function_call", "object": "realtime.item", "status": "in_progress",
                "name": turn.call, "call_id": call_id, "arguments": ""}
        self.items[item_id] = _Item(item_id, "assistant", "function_call")
        base = {"response_id": resp.id, "item_id": item_id, "output_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0, "item": item})
        await self.send({"type": "conversation.item.added", "previous_item_id": self._last_item, "item": item})
        half = len(args) // 2
        for piece in (args[:half], args[half:]):
            if piece:
                await self.send({"type": "response.function_call_arguments.delta", **base, "call_id": call_id, "delta": piece})
        await self.send({"type": "response.function_call_arguments.done", **base, "call_id": call_id, "name": turn.call, "arguments": args})
        done_item = {**item, "status": "completed", "arguments": args}
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0, "item": done_item})
        await self.send({"type": "conversation.item.done", "previous_item_id": self._last_item, "item": done_item})
        self._last_item = item_id
        self._after_call[call_id] = turn.then or DEFAULT_AFTER_CALL
        resp.status = "completed"
        _LOG.info("function call %s(%s) [%s]", turn.call, args, call_id)
        await self.send({"type": "response.done", "response": self._response_obj(resp, "completed", [done_item], self._usage(args, 0, 0))})

    # -- remote MCP --
    async def _list_mcp_tools(self, tool: dict[str, Any]) -> None:
        label = tool["server_label"]
        self._mcp_listed.add(label)
        item_id = _new_id("mcplist")
        item = {"id": item_id, "type": "mcp_list_tools", "server_label": label, "tools": []}
        await self.send({"type": "mcp_list_tools.in_progress", "item_id": item_id})
        await self.send({"type": "conversation.item.added", "previous_item_id": self._last_item, "item": item})
        if label not in self.sim.mcp_servers:
            _LOG.info("MCP server %s: not reachable from the simulated cloud", label)
            await self.send({"type": "mcp_list_tools.failed", "item_id": item_id})
            return
        allowed = tool.get("allowed_tools")
        tools = [t for t in self.sim.mcp_servers[label] if not isinstance(allowed, list) or t["name"] in allowed]
        item = {**item, "tools": [{"name": t["name"], "description": t.get("description", ""),
                                   "input_schema": t.get("input_schema", {"type": "object"})} for t in tools]}
        await self.send({"type": "conversation.item.done", "previous_item_id": self._last_item, "item": item})
        self._last_item = item_id
        await self.send({"type": "mcp_list_tools.completed", "item_id": item_id})

    async def _respond_mcp(self, resp: _Response) -> None:
        turn = resp.turn
        labels = [t["server_label"] for t in self.config.get("tools") or [] if t.get("type") == "mcp"]
        label, _, name = turn.mcp.rpartition(".")
        label = label or (labels[0] if labels else "")
        args = turn.arguments if isinstance(turn.arguments, str) else json.dumps(turn.arguments)
        item_id = _new_id("mcp")
        item: dict[str, Any] = {"id": item_id, "type": "mcp_call", "server_label": label, "name": name, "arguments": ""}
        base = {"response_id": resp.id, "item_id": item_id, "output_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0, "item": item})
        await self.send({"type": "response.mcp_call_arguments.delta", **base, "delta": args})
        await self.send({"type": "response.mcp_call_arguments.done", **base, "arguments": args})
        await self.send({"type": "response.mcp_call.in_progress", "item_id": item_id, "output_index": 0})
        if turn.mcp_fail or label not in labels:
            await self.send({"type": "response.mcp_call.failed", "item_id": item_id, "output_index": 0})
            done = {**item, "arguments": args, "error": {"type": "tool_execution_error", "message": f"{name} failed (simulated)"}}
        else:
            await self.send({"type": "response.mcp_call.completed", "item_id": item_id, "output_index": 0})
            done = {**item, "arguments": args, "output": json.dumps({"success": True})}
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0, "item": done})
        _LOG.info("MCP call %s.%s(%s)%s", label, name, args, " failed" if "error" in done else "")

    async def _respond_audio(self, resp: _Response) -> None:
        turn = resp.turn
        pcm = await asyncio.to_thread(speech_pcm, resp.text)
        item_id = _new_id("item")
        resp.item_id = item_id
        record = _Item(item_id, "assistant", "message", text=resp.text)
        in_conversation = not resp.out_of_band
        if in_conversation:  # an out-of-band reply is not an item of the conversation (nor truncatable)
            self.items[item_id] = record
        base = {"response_id": resp.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        item = {"id": item_id, "type": "message", "role": "assistant", "object": "realtime.item", "status": "in_progress", "content": []}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0, "item": item})
        if in_conversation:
            await self.send({"type": "conversation.item.added", "previous_item_id": self._last_item, "item": item})
            self._last_item = item_id
        await self.send({"type": "response.content_part.added", **base, "part": {"type": "audio", "transcript": ""}})
        words = resp.text.split()
        total_ms = len(pcm) // BYTES_PER_MS
        chunk = self.sim.chunk_ms * BYTES_PER_MS
        said = 0
        t0 = time.monotonic()
        sent = 0
        _LOG.info("reply %s: %r (%d ms of audio)", resp.id, resp.text, total_ms)
        while sent < len(pcm) and resp.cancel_reason is None and not self.silent:
            piece = pcm[sent:sent + chunk]
            await self.send({"type": "response.output_audio.delta", **base, "delta": base64.b64encode(piece).decode("ascii")})
            if resp.first_audio_at is None:
                resp.first_audio_at = time.monotonic()
            self._audio_out = True
            sent += len(piece)
            record.audio_sent_ms = resp.audio_ms = sent // BYTES_PER_MS
            while said < len(words) and said * total_ms <= resp.audio_ms * len(words):
                await self.send({"type": "response.output_audio_transcript.delta", **base, "delta": (" " if said else "") + words[said]})
                said += 1
            if turn.fail == "drop" and resp.audio_ms >= turn.drop_after_ms:
                _LOG.info("scripted: dropping the socket after %d ms of reply audio", resp.audio_ms)
                self._abort()
                return
            if self.sim.pace > 0:
                delay = t0 + resp.audio_ms / 1000 / self.sim.pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
        if self.silent:
            return
        spoken = " ".join(words[:said])
        cancelled = resp.cancel_reason is not None
        status = "cancelled" if cancelled else "completed"
        item_status = "incomplete" if cancelled else "completed"
        if not cancelled:
            await self.send({"type": "response.output_audio.done", **base})
            await self.send({"type": "response.output_audio_transcript.done", **base, "transcript": resp.text})
            await self.send({"type": "response.content_part.done", **base, "part": {"type": "audio", "transcript": resp.text}})
        done_item = {**item, "status": item_status, "content": [{"type": "output_audio", "transcript": resp.text if not cancelled else spoken}]}
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0, "item": done_item})
        if in_conversation:
            await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": done_item})
        resp.status = status
        _LOG.info("response %s %s after %d ms of audio", resp.id, status, resp.audio_ms)
        usage = self._usage(resp.text, resp.audio_ms, len(self._audio) // BYTES_PER_MS)
        await self.send({"type": "response.done", "response": self._response_obj(resp, status, [done_item], usage)})
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
            {"name": "tokens", "limit": 40000, "remaining": 40000 - usage["total_tokens"], "reset_seconds": 1.0},
        ]})

    def _arm_idle(self, resp: _Response) -> None:
        td = self._turn_detection()
        idle = (td or {}).get("idle_timeout_ms")
        if not idle or resp.status != "completed" or self.silent or self.ws.closed:
            return
        # As the API documents it: from response.done plus the reply's playback duration.
        wait = (resp.done_at or time.monotonic()) + resp.audio_ms / 1000 - time.monotonic() + idle / 1000

        async def fire() -> None:
            await asyncio.sleep(max(0.0, wait))
            if self._speaking or self._active is not None:
                return
            start_ms = self._buffer_start // BYTES_PER_MS
            end = len(self._audio)
            item_id = _new_id("item")
            await self.send({"type": "input_audio_buffer.timeout_triggered", "audio_start_ms": start_ms,
                             "audio_end_ms": end // BYTES_PER_MS, "item_id": item_id})
            await self._commit(end, item_id=item_id)
            self._start_response(self.sim.next_turn())

        self._idle_task = asyncio.get_running_loop().create_task(fire())


# ---- the server ---------------------------------------------------------------------------------

@dataclass
class MintedKey:
    value: str
    expires_at: int
    session: dict[str, Any]


class RealtimeSimulator:
    """The simulated API. ``await start()`` then point the device at :attr:`api_base`/:attr:`ws_url`."""

    def __init__(
        self,
        *,
        api_key: str = "sk-sim-local-test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        pace: float = 1.0,
        script: Iterable[Turn | str] = (),
        default_reply: str = DEFAULT_REPLY,
        default_transcript: str = "what's the weather like",
        chunk_ms: int = 50,
        vad_rms: float | None = None,
        max_session_s: float = 3600.0,
        mcp_servers: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.api_key = api_key
        self.mcp_servers: dict[str, list[dict[str, Any]]] = dict(mcp_servers or {})
        """Remote MCP servers the simulated cloud can reach: server_label -> tools; others fail to list."""
        self.host = host
        self.port = port
        self.pace = pace
        """Reply audio speed relative to real time (1.0 real time; 0 as fast as possible)."""
        self.script: deque[Turn] = deque(Turn(say=t) if isinstance(t, str) else t for t in script)
        self.default_reply = default_reply
        self.default_transcript = default_transcript
        self.chunk_ms = chunk_ms
        self.vad_rms = vad_rms
        """RMS (of S16 samples) that counts as speech; None = from the session's VAD threshold."""
        self.max_session_s = max_session_s
        """Sessions end with a ``session_expired`` error after this long (the API's limit is 60 min)."""
        self._warmers: set[asyncio.Future[Any]] = set()
        self.sessions: list[SimSession] = []
        self.minted: list[str] = []
        self.keys: dict[str, MintedKey] = {}
        self.violations: list[str] = []
        self.server_violations: list[str] = []
        self.rejected: list[str] = []
        """Why websocket handshakes were refused."""
        self.secret_requests = 0
        self.secret_bodies: list[dict[str, Any]] = []
        # failure modes
        self.fail_client_secrets: int | Literal["timeout"] | None = None
        self.retry_after_s: float = 2.0
        self.fail_connect: int | None = None
        self.key_ttl_s: float | None = None
        """Override the lifetime of minted keys (tests of refresh)."""
        self.runner: SimulatorThread | None = None
        """The thread running it, when started by :class:`SimulatorThread`."""
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- addresses --
    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    # -- scripting --
    def add(self, *turns: Turn | str) -> None:
        """Queue turns (strings are replies); thread-safe."""
        for t in turns:
            self.script.append(Turn(say=t) if isinstance(t, str) else t)
        self._warm(turns)

    def next_turn(self, instructions: str = "") -> Turn:
        try:
            return self.script.popleft()
        except IndexError:
            # An unscripted response.create that quotes what to say (an announcement) gets it said.
            quoted = re.findall(r"[\"“]([^\"”]{2,})[\"”]", instructions or "")
            return Turn(say=quoted[-1] if quoted else self.default_reply)

    # -- lifecycle --
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_post("/v1/realtime/client_secrets", self._client_secrets)
        app.router.add_get("/v1/realtime", self._websocket)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._warm([self.default_reply, DEFAULT_AFTER_CALL, *self.script])
        _LOG.info("realtime simulator on %s (keys from %s/realtime/client_secrets)", self.ws_url, self.api_base)
        if not conformance.available():
            _LOG.warning("the openai package is not installed: client events are not checked for conformance")

    def _warm(self, turns: Iterable[Turn | str]) -> None:
        """Synthesise replies ahead (espeak-ng takes a few hundred ms per sentence)."""
        texts = [t for turn in turns for t in ((turn,) if isinstance(turn, str) else (turn.say, turn.then)) if t]
        if not texts or self._loop is None or self._loop.is_closed():
            return

        def schedule() -> None:
            task = asyncio.ensure_future(asyncio.to_thread(lambda: [speech_pcm(t) for t in texts]))
            self._warmers.add(task)
            task.add_done_callback(self._warmers.discard)

        self._loop.call_soon_threadsafe(schedule)

    async def stop(self) -> None:
        for task in list(self._warmers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for s in self.sessions:
            if not s.ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.ws.close(code=1001, message=b"simulator stopping"), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- waiting (works from any thread/loop: it polls) --
    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator: {what} not reached within {timeout:g} s")
            await asyncio.sleep(0.01)

    def wait_for_sync(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator: {what} not reached within {timeout:g} s")
            time.sleep(0.01)

    # -- HTTP --
    async def _client_secrets(self, request: web.Request) -> web.StreamResponse:
        self.secret_requests += 1
        fail = self.fail_client_secrets
        if fail == "timeout":
            await asyncio.sleep(3600)
        if isinstance(fail, int):
            headers = {"Retry-After": f"{self.retry_after_s:g}"} if fail == 429 else None
            return _http_error(fail, "simulated failure", "simulated", headers=headers)
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            return _http_error(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _http_error(400, "We could not parse the JSON body of your request.", "invalid_json")
        if not isinstance(body, dict):
            return _http_error(400, "The body must be a JSON object.", "invalid_json")
        self.secret_bodies.append(body)
        unknown = sorted(set(body) - {"expires_after", "session"})
        if unknown:
            return _http_error(400, f"Unknown parameter: '{unknown[0]}'.", "unknown_parameter", param=unknown[0])
        ttl: float = 600
        if "expires_after" in body:
            ea = body["expires_after"]
            if not isinstance(ea, dict) or set(ea) - {"anchor", "seconds"} or ea.get("anchor") != "created_at":
                return _http_error(400, "expires_after must be {anchor: 'created_at', seconds: 10..7200}", "invalid_value", param="expires_after")
            seconds = ea.get("seconds", 600)
            if isinstance(seconds, bool) or not isinstance(seconds, int) or not 10 <= seconds <= 7200:
                return _http_error(400, f"Invalid 'expires_after.seconds': {seconds!r}; expected 10 to 7200.", "invalid_value", param="expires_after.seconds")
            ttl = seconds
        session = body.get("session", {"type": "realtime"})
        problems = conformance.check_session(session)
        if problems:
            self.violations.extend(problems)
            return _http_error(400, "; ".join(problems), "invalid_value", param=problems[0].split(":")[0])
        if self.key_ttl_s is not None:
            ttl = self.key_ttl_s
        value = "ek_" + secrets.token_hex(16)
        expires_at = int(round(time.time() + ttl))
        self.keys[value] = MintedKey(value, expires_at, session)
        self.minted.append(value)
        _LOG.info("minted key %s valid %g s", _mask(value), ttl)
        full = {**default_session(session.get("model") or "gpt-realtime"), **session}
        full.update({"id": _new_id("sess"), "object": "realtime.session", "expires_at": 0})
        return web.json_response({"value": value, "expires_at": expires_at, "session": full})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        def refuse(status: int, why: str) -> web.StreamResponse:
            self.rejected.append(why)
            _LOG.warning("refused websocket: %s", why)
            return _http_error(status, why, "refused")

        if "OpenAI-Beta" in request.headers:
            return refuse(400, "OpenAI-Beta header present: that selects the beta protocol; GA clients must not send it")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return refuse(401, "missing Authorization: Bearer header")
        token = auth[len("Bearer "):]
        if token == self.api_key:
            return refuse(403, "the API key itself was used on the websocket; devices must use an ephemeral key")
        minted = self.keys.get(token)
        if minted is None:
            return refuse(401, "unknown key (not minted by this simulator)")
        if time.time() > minted.expires_at:
            return refuse(401, "ephemeral key expired")
        model = request.query.get("model", "")
        if not model:
            return refuse(400, "missing ?model= query parameter")
        if self.fail_connect is not None:
            return refuse(self.fail_connect, f"simulated handshake failure {self.fail_connect}")
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True, compress=False)
        await ws.prepare(request)
        session = SimSession(self, ws, request, token, model, minted.session)
        self.sessions.append(session)
        _LOG.info("session %d open (key %s, model %s)", len(self.sessions), _mask(token), model)
        try:
            await session.run()
        finally:
            _LOG.info("session %d closed", self.sessions.index(session) + 1)
        return ws


def _http_error(status: int, message: str, code: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    etype = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": etype, "code": code, "param": param}}
    return web.json_response(body, status=status, headers=headers)


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class SimulatorThread:
    """Runs a :class:`RealtimeSimulator` on its own loop in a thread (so blocking tests cannot stall it)."""

    def __init__(self, **kwargs: Any) -> None:
        self.sim = RealtimeSimulator(**kwargs)
        self.sim.runner = self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="realtime-simulator", daemon=True)

    def start(self, timeout: float = 10.0) -> RealtimeSimulator:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sim.start(), self._loop).result(timeout)
        return self.sim

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the simulator's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self.call(self.sim.stop(), timeout)
        finally:
            with contextlib.suppress(Exception):
                self.call(_cancel_pending(), timeout)  # handlers still running: end them, quietly
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()


# ---- CLI ----------------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.simulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = any free port")
    p.add_argument("--api-key", default="sk-sim-demo", help="the API key client_secrets accepts")
    p.add_argument("--pace", type=float, default=1.0, help="reply audio speed vs. real time (0 = no pacing)")
    p.add_argument("--reply", action="append", default=[], help="a scripted reply (repeatable, used in order)")
    p.add_argument("--script", help="JSON file: a list of turns {say, call, arguments, then, transcript, fail}")
    p.add_argument("--default-reply", default=DEFAULT_REPLY)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    turns: list[Turn | str] = list(args.reply)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            turns = [Turn(**t) if isinstance(t, dict) else str(t) for t in json.load(f)] + turns
    sim = RealtimeSimulator(api_key=args.api_key, host=args.host, port=args.port, pace=args.pace, script=turns, default_reply=args.default_reply)
    await sim.start()
    print(f"realtime simulator: api_base={sim.api_base} ws_url={sim.ws_url} (Ctrl-C stops)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def cli(argv: list[str] | None = None) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(argv))


if __name__ == "__main__":
    cli()


__all__ = ["RealtimeSimulator", "SimSession", "SimulatorThread", "Turn", "default_session", "main", "speech_pcm", "tone_pcm"]
