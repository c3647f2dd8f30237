"""The function-call registry: tools the model can call, their schemas and safe execution."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

_LOG = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Tool:
    """One function the model can call.

    ``parameters`` is a JSON schema object; ``handler`` gets the parsed arguments and returns a
    JSON-serialisable dict (by convention ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``).
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler

    def schema(self) -> dict[str, Any]:
        """The GA session's tool definition."""
        return {"type": "function", "name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolResult:
    """What a call produced: the output sent to the model and what it took."""

    name: str
    arguments: dict[str, Any]
    output: dict[str, Any]
    duration_s: float

    @property
    def output_json(self) -> str:
        return json.dumps(self.output, ensure_ascii=False, default=str)


class ToolRegistry:
    """Tools by name. Later parts (home devices) add theirs; the session lists them all."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._listeners: list[Callable[[], None]] = []

    def add(self, tool: Tool) -> None:
        """Add or replace a tool."""
        self._tools[tool.name] = tool
        self._changed()

    def remove(self, name: str) -> None:
        if self._tools.pop(name, None) is not None:
            self._changed()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever the set of tools changes."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                _LOG.exception("tool registry listener failed")

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """Tool definitions for session.update, in a stable order."""
        return [self._tools[n].schema() for n in sorted(self._tools)]

    async def call(self, name: str, arguments: str, timeout_s: float) -> ToolResult:
        """Run tool ``name`` with the model's JSON ``arguments``; never raises.

        Bad JSON, an unknown tool, a timeout or a tool that raises all become
        ``{"ok": false, "error": ...}`` so the conversation goes on.
        """
        start = time.monotonic()
        args: dict[str, Any] = {}

        def done(output: dict[str, Any]) -> ToolResult:
            return ToolResult(name, args, output, time.monotonic() - start)

        tool = self._tools.get(name)
        if tool is None:
            return done({"ok": False, "error": f"unknown tool {name!r}; available: {', '.join(self.names())}"})
        try:
            parsed = json.loads(arguments) if arguments and arguments.strip() else {}
        except (json.JSONDecodeError, TypeError) as exc:
            return done({"ok": False, "error": f"arguments are not valid JSON: {exc}"})
        if not isinstance(parsed, dict):
            return done({"ok": False, "error": "arguments must be a JSON object"})
        args = parsed
        try:
            output = await asyncio.wait_for(tool.handler(args), timeout_s)
        except asyncio.TimeoutError:
            return done({"ok": False, "error": f"{name} did not finish within {timeout_s:g} s"})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a tool bug must not end the conversation
            _LOG.exception("tool %s failed", name)
            return done({"ok": False, "error": f"{name} failed: {type(exc).__name__}: {exc}"})
        if not isinstance(output, dict):
            output = {"ok": True, "result": output}
        return done(output)
