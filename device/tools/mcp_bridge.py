"""Local MCP servers bridged by the device: their tools become function tools of the session.

A home's MCP server (Home Assistant's "MCP Server" integration) is usually not reachable from the
cloud, so for a ``[[mcp]]`` server with ``local = true`` the device connects itself with the
official ``mcp`` SDK over streamable HTTP, lists the tools, registers the allowed ones in the
:class:`~device.tools.registry.ToolRegistry` as ``<server>__<tool>`` and calls them when the
model does. One task per server holds the connection, pings it, and reconnects with backoff; the
daemon runs on while a server is down, and a call then gets a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from device.config import McpConfig
from device.tools.registry import Tool, ToolRegistry

_LOG = logging.getLogger("speaker.mcp")

RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # backoff between connection attempts
PING_S = 30.0
CLOSE_TIMEOUT_S = 2.0
BOOT_WAIT_S = 3.0  # longest the daemon's start waits for a server's first answer  # how often an idle connection is checked
DESCRIPTION_MAX_CHARS = 1024
_NAME_OK = re.compile(r"[^A-Za-z0-9_-]")


def function_name(server: str, tool: str) -> str:
    """The session's name of a bridged tool: ``<server>__<tool>``, in the characters functions allow."""
    return _NAME_OK.sub("_", f"{server}__{tool}")[:64]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class McpBridge:
    """One local MCP server: connection, tool registration and calls."""

    def __init__(self, server: McpConfig, registry: ToolRegistry, *, call_timeout_s: float) -> None:
        self.server = server
        self.registry = registry
        self.call_timeout_s = call_timeout_s
        self.last_error = "not connected yet"
        self.connects = 0
        self._client: Any = None
        self._http_status: int | None = None
        self._registered: dict[str, dict[str, Any]] = {}  # function name -> schema
        self._broken = asyncio.Event()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def tool_names(self) -> list[str]:
        """The function names this server currently has in the registry."""
        return sorted(self._registered)

    # ----- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; wait for the first attempt at most ``BOOT_WAIT_S``.

        A server that answers later still gets its tools registered (an open session then gets a
        tools update), so a slow server never holds up the wake word.
        """
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp {self.server.name}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first.wait(), min(self.server.connect_timeout_s, BOOT_WAIT_S))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        for name in list(self._registered):
            self.registry.remove(name)
        self._registered.clear()

    async def probe(self) -> str:
        """Connect once, list the tools, disconnect: the ``speaker check`` line."""
        try:
            async with self._connect() as client:
                listed = await asyncio.wait_for(client.list_tools(), self.server.connect_timeout_s)
        except Exception as exc:
            raise RuntimeError(f"{self.server.server_url}: {self._describe(exc)}") from None
        names = [t.name for t in listed.tools]
        allowed = [n for n in names if self._allowed(n)]
        missing = sorted(set(self.server.allowed_tools) - set(names))
        note = f"; allowed_tools not offered: {', '.join(missing)}" if missing else ""
        return f"{self.server.server_url}: {len(names)} tools, {len(allowed)} allowed ({', '.join(allowed) or 'none'}){note}"

    # ----- connection --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connect(self) -> Any:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = dict(self.server.headers)
        if self.server.authorization is not None:
            headers["Authorization"] = f"Bearer {self.server.authorization.reveal()}"
        self._http_status = None

        async def record(response: Any) -> None:
            self._http_status = response.status_code

        http = httpx2.AsyncClient(headers=headers, timeout=self.server.connect_timeout_s, event_hooks={"response": [record]})
        async with http:
            transport = streamable_http_client(self.server.server_url, http_client=http)
            client = Client(transport, read_timeout_seconds=max(self.call_timeout_s, self.server.connect_timeout_s))
            async with asyncio.timeout(self.server.connect_timeout_s):
                await client.__aenter__()
            try:
                yield client
            finally:
                # Closing tells the server goodbye; a server that is gone must not hold us up.
                with contextlib.suppress(BaseException):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        await client.__aexit__(None, None, None)

    def _describe(self, exc: BaseException) -> str:
        """A one-line, secret-free reason for a failure."""
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"no answer within {self.server.connect_timeout_s:g} s"
        status = self._http_status
        if status is not None and status >= 400:
            hint = " (check authorization_file)" if status in (401, 403) else ""
            return f"HTTP {status}{hint}"
        leaf = next(_leaves(exc), exc)
        text = str(leaf) or type(leaf).__name__
        return f"{type(leaf).__name__}: {text}"

    async def _run(self) -> None:
        attempt = 0
        while True:
            # The SDK's anyio task groups cancel the task that holds the connection when the
            # transport fails: hold it in a task of its own, so that only a stop() ends this loop.
            session = asyncio.get_running_loop().create_task(self._session())
            try:
                await session
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    session.cancel()
                    self._client = None
                    raise
            except BaseException as exc:  # anyio raises exception groups; the loop must go on
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self.last_error = self._describe(exc)
            was_connected = self._client is not None
            self._client = None
            self._first.set()
            if was_connected:
                attempt = 0
            delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            attempt += 1
            _LOG.warning("MCP server %s %s: %s; retrying in %g s", self.server.name,
                         "connection lost" if was_connected else "unreachable", self.last_error, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """One connection: list and register the tools, then watch it until it breaks."""
        async with self._connect() as client:
            listed = await asyncio.wait_for(client.list_tools(), self.server.connect_timeout_s)
            self._register(listed.tools)
            self._client = client
            self._broken.clear()
            self.connects += 1
            again = "reconnected" if self.connects > 1 else "connected"
            _LOG.info("MCP server %s %s (%s): %d tools: %s", self.server.name, again, self.server.server_url,
                      len(self._registered), ", ".join(self.tool_names) or "none")
            self._first.set()
            await self._watch(client)

    async def _watch(self, client: Any) -> None:
        """Return when the connection is found broken (a failed call or ping)."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._broken.wait(), PING_S)
            if self._broken.is_set():
                return
            await asyncio.wait_for(client.send_ping(), self.server.connect_timeout_s)

    # ----- tools -----------------------------------------------------------------------------------

    def _allowed(self, tool: str) -> bool:
        return not self.server.allowed_tools or tool in self.server.allowed_tools

    def _register(self, tools: list[Any]) -> None:
        offered = {t.name for t in tools}
        missing = sorted(set(self.server.allowed_tools) - offered)
        if missing:
            _LOG.warning("MCP server %s does not offer allowed_tools %s", self.server.name, ", ".join(missing))
        wanted: dict[str, Tool] = {}
        for t in tools:
            if not self._allowed(t.name):
                continue
            name = function_name(self.server.name, t.name)
            params = dict(t.input_schema or {}) or {"type": "object", "properties": {}}
            params.setdefault("type", "object")
            desc = (t.description or t.name).strip()
            if self.server.description:
                desc = f"{desc} ({self.server.description})"
            wanted[name] = Tool(name, desc[:DESCRIPTION_MAX_CHARS], params, self._handler(t.name))
        for name in list(self._registered):
            if name not in wanted:
                self.registry.remove(name)
                del self._registered[name]
        for name, tool in wanted.items():
            if self._registered.get(name) != tool.schema():  # no session.update when nothing changed
                self.registry.add(tool)
                self._registered[name] = tool.schema()

    def _handler(self, tool: str) -> Any:
        async def call(args: dict[str, Any]) -> dict[str, Any]:
            return await self.call(tool, args)

        return call

    async def call(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        """Call ``tool`` on the server; failures become ``{"ok": false, "error": ...}`` for the model."""
        label = self.server.name
        if not self._allowed(tool):
            return {"ok": False, "error": f"{tool} is not among the allowed tools of MCP server {label}"}
        client = self._client
        if client is None:
            return {"ok": False, "error": f"the MCP server {label} is not reachable ({self.last_error}); the device keeps retrying"}
        try:
            result = await client.call_tool(tool, args, read_timeout_seconds=self.call_timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self.last_error = self._describe(exc)
            self._broken.set()  # the connection task reconnects and says so
            return {"ok": False, "error": f"the MCP server {label} failed: {self.last_error}"}
        text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text").strip()
        if result.is_error:
            return {"ok": False, "error": text or f"{tool} failed on MCP server {label}"}
        try:
            value: Any = json.loads(text) if text else (result.structured_content or "")
        except json.JSONDecodeError:
            value = text
        return {"ok": True, "result": value}


class McpBridges:
    """Every ``local = true`` server of the config."""

    def __init__(self, servers: tuple[McpConfig, ...], registry: ToolRegistry, *, call_timeout_s: float) -> None:
        self.bridges = [McpBridge(s, registry, call_timeout_s=call_timeout_s) for s in servers if s.local]

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self.bridges))

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.bridges), return_exceptions=True)


__all__ = ["McpBridge", "McpBridges", "function_name"]
