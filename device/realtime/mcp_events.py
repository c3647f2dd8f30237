"""The log of what remote MCP servers do (``{"type": "mcp"}`` session tools, called by the cloud).

The cloud calls a remote MCP server itself; the device only narrates the typed
:class:`~device.realtime.server_events.McpActivity` events (tools listed, calls made, their
results and errors). The runner hands it every server event; an approval request is the
conversation machine's to answer (it declines: the device has no approval step).
"""

from __future__ import annotations

import logging

from . import server_events as se

_LOG = logging.getLogger("speaker.mcp")

_REMEMBER = 256  # items whose server label and tool name are kept for the log lines


class McpEvents:
    """Remembers MCP items by id so each log line names the server and tool."""

    def __init__(self, log: logging.Logger = _LOG) -> None:
        self.log = log
        self._labels: dict[str, str] = {}

    def _label(self, item_id: str) -> str:
        return self._labels.get(item_id, "?")

    def _remember(self, ev: se.McpActivity) -> None:
        if ev.item_id in self._labels or not ev.server_label:
            return
        if len(self._labels) >= _REMEMBER:
            self._labels.pop(next(iter(self._labels)))
        self._labels[ev.item_id] = f"{ev.server_label}.{ev.name}" if ev.name else ev.server_label

    def note(self, ev: se.ServerEvent) -> None:
        """Log ``ev`` if it is about a remote MCP server."""
        if not isinstance(ev, se.McpActivity):
            return
        if ev.kind:
            self._item(ev)
            return
        kind, label = ev.type, self._label(ev.item_id)
        if kind == "mcp_list_tools.in_progress":
            self.log.debug("MCP: listing the tools of %s", label)
        elif kind == "mcp_list_tools.completed":
            self.log.debug("MCP: tools of %s listed", label)
        elif kind == "mcp_list_tools.failed":
            self.log.warning("MCP server %s: the cloud could not list its tools (check server_url and authorization_file)", label)
        elif kind == "response.mcp_call_arguments.done":
            self.log.info("MCP call %s(%s)", label, ev.arguments)
        elif kind == "response.mcp_call.in_progress":
            self.log.debug("MCP call %s running", label)
        elif kind == "response.mcp_call.completed":
            self.log.info("MCP call %s completed", label)
        elif kind == "response.mcp_call.failed":
            self.log.warning("MCP call %s failed", label)
        # response.mcp_call_arguments.delta: the done event says it all

    def _item(self, ev: se.McpActivity) -> None:
        self._remember(ev)
        done = ev.type.endswith(".done")
        if ev.kind == "mcp_list_tools" and done and ev.type.startswith("conversation."):
            self.log.info("MCP server %s offers %d tools: %s", ev.server_label, len(ev.tools), ", ".join(ev.tools) or "none")
        elif ev.kind == "mcp_call" and done and ev.type.startswith("response."):
            if ev.error:
                self.log.warning("MCP call %s error: %s", self._label(ev.item_id), ev.error)
            else:
                self.log.debug("MCP call %s output: %.300s", self._label(ev.item_id), ev.output)


__all__ = ["McpEvents"]
