"""How a realtime session is configured: instructions, tools and the ``session.update`` payload.

One place combines the config (``[realtime]``, ``[[mcp]]``), what the device knows at the moment a
session opens (its tools, its household's device and area names) and the protocol builders. The
conversation code only asks for :meth:`SessionSetup.session_update` and
:meth:`SessionSetup.tools_update`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from device.config import McpConfig, Settings
from device.realtime import protocol
from device.tools.registry import ToolRegistry

_LOG = logging.getLogger(__name__)

HOUSEHOLD_PROMPT_MAX_CHARS = 800  # a transcription prompt is a hint, not a document


def wake_phrase(model: str) -> str:
    """The spoken wake word of a model name or path: ``hey_jarvis`` -> ``Hey Jarvis``."""
    stem = Path(model).name.split(".")[0] if ("/" in model or "." in model) else model
    stem = stem.split("_v0")[0]  # openWakeWord file names carry a version: hey_jarvis_v0.1
    return " ".join(w.capitalize() for w in stem.replace("-", "_").split("_") if w)


def household_prompt(wake_word: str, names: Iterable[str]) -> str:
    """The ``"auto"`` transcription prompt: the wake word and the names people will say."""
    seen: set[str] = set()
    words: list[str] = []
    for name in [wake_word, *names]:
        name = " ".join(str(name).split())
        if name and name.casefold() not in seen:
            seen.add(name.casefold())
            words.append(name)
    if not words:
        return ""
    text = "Names you may hear: " + ", ".join(words) + "."
    if len(text) > HOUSEHOLD_PROMPT_MAX_CHARS:
        text = text[: HOUSEHOLD_PROMPT_MAX_CHARS].rsplit(",", 1)[0] + "."
    return text


def remote_mcp_tool(server: McpConfig) -> dict[str, Any]:
    """The session's ``{"type": "mcp", ...}`` tool for a server the cloud connects to itself."""
    tool: dict[str, Any] = {
        "type": "mcp",
        "server_label": server.name,
        "server_url": server.server_url,
        "require_approval": server.require_approval,
    }
    if server.allowed_tools:
        tool["allowed_tools"] = list(server.allowed_tools)
    if server.authorization is not None:
        tool["authorization"] = server.authorization.reveal()
    if server.headers:
        tool["headers"] = dict(server.headers)
    if server.description:
        tool["server_description"] = server.description
    return tool


class SessionSetup:
    """Builds the session's instructions, tools and ``session.update`` events from the settings."""

    def __init__(
        self,
        settings: Settings,
        tools: ToolRegistry,
        *,
        devices_summary: Callable[[], str] = lambda: "",
        vocabulary: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self.settings = settings
        self.registry = tools
        self.devices_summary = devices_summary
        self.vocabulary = vocabulary
        self._remote = [remote_mcp_tool(s) for s in settings.mcp if not s.local]

    def tools(self) -> list[dict[str, Any]]:
        """Every tool of the session: the device's functions, then the remote MCP servers."""
        return [*self.registry.schemas(), *self._remote]

    def household(self) -> str:
        """Wake word, device and area names for the ``"auto"`` transcription prompt."""
        try:
            names = list(self.vocabulary())
        except Exception:
            _LOG.exception("device names for the transcription prompt failed")
            names = []
        return household_prompt(wake_phrase(self.settings.wake.model), names)

    def instructions(self, now: datetime | None = None) -> str:
        """``realtime.instructions`` with its placeholders filled for this moment."""
        try:
            devices = self.devices_summary()
        except Exception:
            _LOG.exception("devices summary failed")
            devices = ""
        rt = self.settings.realtime
        return protocol.render_instructions(
            rt.instructions,
            device=self.settings.mqtt.device_id,
            language=rt.language,
            devices=devices,
            now=now or datetime.now(),
            tools=protocol.tools_summary(self.tools()),
        )

    def session_update(self) -> dict[str, Any]:
        """The ``session.update`` that opens a session."""
        return protocol.session_update(
            self.settings.realtime, instructions=self.instructions(), tools=self.tools(), household=self.household()
        )

    def tools_update(self) -> dict[str, Any]:
        """The ``session.update`` that changes only the tools (devices discovered mid-conversation)."""
        tools = self.tools()
        return protocol.tools_update(tools, protocol.tool_choice(self.settings.realtime, tools))


__all__ = ["SessionSetup", "household_prompt", "remote_mcp_tool", "wake_phrase"]
