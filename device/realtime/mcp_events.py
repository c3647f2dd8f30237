"""The server's MCP events (remote ``{"type": "mcp"}`` session tools): handled and logged.

The cloud calls a remote MCP server itself; the device only narrates what happens
(``mcp_list_tools.*``, ``response.mcp_call_arguments.*``, ``response.mcp_call.*`` and the MCP
items they refer to) and answers an approval request, which it cannot put to anyone yet, with
a decline. The conversation code calls :meth:`McpEvents.handle` for every server event and sends
the client events it returns.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

_LOG = logging.getLogger("speaker.mcp")

_MCP_ITEMS = ("mcp_list_tools", "mcp_call", "mcp_approval_request")
_ITEM_EVENTS = ("conversation.item.added", "conversation.item.done", "response.output_item.added", "response.output_item.done")
_REMEMBER = 256  # items whose server label and tool name are kept for the log lines
DECLINE_REASON = "This speaker cannot ask anyone to approve tool calls; set require_approval = \"never\" to allow them."


def approval_response(request_id: str, approve: bool, reason: str = "") -> dict[str, Any]:
    """``conversation.item.create`` answering an ``mcp_approval_request``."""
    item: dict[str, Any] = {
        "type": "mcp_approval_response",
        "id": "mcpapr_" + uuid.uuid4().hex[:16],
        "approval_request_id": request_id,
        "approve": approve,
    }
    if reason:
        item["reason"] = reason
    return {"type": "conversation.item.create", "item": item}


class McpEvents:
    """Remembers MCP items by id so each log line names the server and tool."""

    def __init__(self, log: logging.Logger = _LOG) -> None:
        self.log = log
        self._items: dict[str, dict[str, Any]] = {}

    def _label(self, item_id: str) -> str:
        item = self._items.get(item_id) or {}
        label = item.get("server_label") or "?"
        return f"{label}.{item['name']}" if item.get("name") else label

    def _remember(self, item: dict[str, Any]) -> None:
        if len(self._items) >= _REMEMBER:
            self._items.pop(next(iter(self._items)))
        self._items[str(item.get("id") or "")] = item

    def handle(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """Log one server event if it is about MCP; return the client events to send in reply."""
        kind = str(event.get("type") or "")
        if kind in _ITEM_EVENTS:
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") in _MCP_ITEMS:
                return self._item(kind, item)
            return []
        if not kind.startswith(("mcp_list_tools.", "response.mcp_call")):
            return []
        item_id = str(event.get("item_id") or "")
        if kind == "mcp_list_tools.in_progress":
            self.log.debug("MCP: listing the tools of %s", self._label(item_id))
        elif kind == "mcp_list_tools.completed":
            self.log.debug("MCP: tools of %s listed", self._label(item_id))
        elif kind == "mcp_list_tools.failed":
            self.log.warning("MCP server %s: the cloud could not list its tools (check server_url and authorization_file)",
                             self._label(item_id))
        elif kind == "response.mcp_call_arguments.done":
            self.log.info("MCP call %s(%s)", self._label(item_id), event.get("arguments", ""))
        elif kind == "response.mcp_call.in_progress":
            self.log.debug("MCP call %s running", self._label(item_id))
        elif kind == "response.mcp_call.completed":
            self.log.info("MCP call %s completed", self._label(item_id))
        elif kind == "response.mcp_call.failed":
            self.log.warning("MCP call %s failed", self._label(item_id))
        return []  # response.mcp_call_arguments.delta: the done event says it all

    def _item(self, kind: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        self._remember(item)
        done = kind.endswith(".done")
        if item["type"] == "mcp_list_tools" and done and kind.startswith("conversation."):
            names = [str(t.get("name")) for t in item.get("tools") or [] if isinstance(t, dict)]
            self.log.info("MCP server %s offers %d tools: %s", item.get("server_label"), len(names), ", ".join(names) or "none")
        elif item["type"] == "mcp_call" and done and kind.startswith("response."):
            error = item.get("error")
            if isinstance(error, dict):
                self.log.warning("MCP call %s error: %s", self._label(str(item.get("id"))), error.get("message") or error)
            else:
                self.log.debug("MCP call %s output: %.300s", self._label(str(item.get("id"))), item.get("output"))
        elif item["type"] == "mcp_approval_request" and done and kind.startswith("conversation."):
            self.log.warning("MCP server %s asks approval to call %s: declined (the device has no approval step)",
                             item.get("server_label"), item.get("name"))
            return [approval_response(str(item.get("id")), False, DECLINE_REASON), {"type": "response.create"}]
        return []


__all__ = ["DECLINE_REASON", "McpEvents", "approval_response"]
