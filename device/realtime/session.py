"""Transport of a realtime session: one websocket to ``{url}?model={model}``.

Authenticates with ``Authorization: Bearer <ephemeral key>`` and no ``OpenAI-Beta`` header (that
header selects the beta protocol). Events go out and come in as dicts; a connection that drops
surfaces as :class:`SessionClosed`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

_LOG = logging.getLogger(__name__)

# websockets >= 14 pings to notice a dead peer; 13 has no keepalive in its asyncio client.
_KEEPALIVE: dict[str, float] = (
    {"ping_interval": 20.0, "ping_timeout": 20.0} if "ping_interval" in inspect.signature(connect.__init__).parameters else {}
)
# Audio deltas are a few kB; a whole session.created with long instructions stays far below this.
_MAX_MESSAGE = 16 * 1024 * 1024


class SessionClosed(Exception):
    """The session is gone: dropped, closed by the server, or never opened.

    ``code``/``reason`` come from the close frame when there was one; ``status`` is the HTTP
    status of a refused handshake. Messages never hold a key.
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.status = status


class ConnectError(SessionClosed):
    """The websocket could not be opened (timeout, refused, handshake rejected)."""


def session_url(url: str, model: str) -> str:
    """``url`` with ``model`` added to its query."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"model": model})))


def _describe_close(exc: ConnectionClosed) -> tuple[str, int | None, str]:
    frame = exc.rcvd
    if frame is None:
        return "connection lost without a close frame", None, ""
    reason = frame.reason or ""
    text = f"server closed the connection (code {frame.code}{': ' + reason if reason else ''})"
    return text, frame.code, reason


class RealtimeSession:
    """One open realtime websocket. Create with :meth:`connect`."""

    def __init__(self, ws: ClientConnection, url: str) -> None:
        self._ws = ws
        self.url = url
        self.opened_at = time.monotonic()
        self._closed = False
        self._seq = 0
        self._sent_types: OrderedDict[str, str] = OrderedDict()
        self.ignored = 0
        """Server messages that were not JSON objects (logged sparingly)."""

    @classmethod
    async def connect(cls, url: str, model: str, key: str, timeout_s: float) -> RealtimeSession:
        """Open the websocket within ``timeout_s``; raise :class:`ConnectError` naming the cause."""
        full = session_url(url, model)
        try:
            ws = await asyncio.wait_for(
                connect(
                    full,
                    additional_headers={"Authorization": f"Bearer {key}"},
                    open_timeout=timeout_s,
                    close_timeout=2.0,
                    max_size=_MAX_MESSAGE,
                    # base64 PCM barely compresses; deflate would only cost CPU on the Pi.
                    compression=None,
                    **_KEEPALIVE,
                ),
                timeout_s,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = " (the key was refused)" if status in (401, 403) else ""
            raise ConnectError(f"realtime server {url} rejected the connection: HTTP {status}{hint}", status=status) from None
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectError(f"realtime server {url} did not accept the connection within {timeout_s:g} s") from None
        except InvalidURI:
            raise ConnectError(f"realtime.url {url!r} is not a valid websocket URL") from None
        except InvalidHandshake as exc:
            raise ConnectError(f"realtime server {url}: websocket handshake failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot reach realtime server {url}: {exc.strerror or type(exc).__name__}") from None
        _LOG.debug("realtime session open: %s", full)
        return cls(ws, url)

    @property
    def closed(self) -> bool:
        return self._closed

    def sent_type(self, event_id: str) -> str | None:
        """Type of a recently sent event, to name the culprit of an ``error`` event."""
        return self._sent_types.get(event_id)

    async def send(self, event: dict[str, Any]) -> None:
        """Send one client event (an ``event_id`` is added when it has none)."""
        if self._closed:
            raise SessionClosed("session is closed")
        if "event_id" not in event:
            self._seq += 1
            event = {**event, "event_id": f"dev_{self._seq}"}
        kind = str(event.get("type"))
        if kind != "input_audio_buffer.append":
            self._sent_types[event["event_id"]] = kind
            while len(self._sent_types) > 128:
                self._sent_types.popitem(last=False)
        try:
            await self._ws.send(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
        except ConnectionClosed as exc:
            self._closed = True
            text, code, reason = _describe_close(exc)
            raise SessionClosed(text, code=code, reason=reason) from None

    async def recv(self) -> dict[str, Any]:
        """The next server event; raise :class:`SessionClosed` when the connection ends."""
        while True:
            try:
                raw = await self._ws.recv()
            except ConnectionClosed as exc:
                self._closed = True
                text, code, reason = _describe_close(exc)
                raise SessionClosed(text, code=code, reason=reason) from None
            if isinstance(raw, bytes):
                self._ignored(f"a binary websocket message ({len(raw)} bytes)")
                continue
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                self._ignored(f"a server message that is not JSON: {raw[:80]!r}")
                continue
            if isinstance(event, dict):
                return event
            self._ignored(f"a server message that is not an object: {raw[:80]!r}")

    def _ignored(self, what: str) -> None:
        # A broken or hostile server must not flood the journal: the 1st, 10th, 100th ... are logged.
        self.ignored += 1
        n = self.ignored
        if n in (1, 10, 100) or n % 1000 == 0:
            _LOG.warning("ignoring %s%s", what, f" ({n} ignored in this session)" if n > 1 else "")
        else:
            _LOG.debug("ignoring %s", what)

    async def close(self) -> None:
        """Close cleanly (code 1000); never raises."""
        self._closed = True
        try:
            await asyncio.wait_for(self._ws.close(code=1000), 3.0)
        except Exception as exc:  # closing is best effort: the peer may already be gone
            _LOG.debug("closing realtime session: %s", exc)


__all__ = ["ConnectError", "RealtimeSession", "SessionClosed", "session_url"]
