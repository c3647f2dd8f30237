"""Local tools the model can always call: end the conversation, set the speaker's volume."""

from __future__ import annotations

from typing import Any, Protocol

from .registry import Tool, ToolRegistry


class LocalActions(Protocol):
    """What the local tools act on (the Assistant implements it)."""

    volume: int

    async def set_volume(self, volume: int, source: str) -> None: ...

    def request_end(self, reason: str) -> bool: ...


def _end_tool(actions: LocalActions) -> Tool:
    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        if not actions.request_end("end_conversation"):
            return {"ok": False, "error": "no conversation is open"}
        return {"ok": True, "note": "the conversation ends after this reply: say a very short goodbye, ask nothing"}

    return Tool(
        name="end_conversation",
        description=(
            "End the conversation and stop listening, when the person says goodbye, says they are done, "
            "or asks you to stop. The device stops listening after your next (short) reply."
        ),
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        handler=handler,
    )


def _volume_tool(actions: LocalActions) -> Tool:
    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(args) - {"volume", "change"})
        if unknown:
            return {"ok": False, "error": f"unknown argument {unknown[0]!r}; use volume (0-100) or change (-100..100)"}
        volume, change = args.get("volume"), args.get("change")
        for name, value in (("volume", volume), ("change", change)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return {"ok": False, "error": f"{name} must be a number, got {value!r}"}
        if (volume is None) == (change is None):
            return {"ok": False, "error": "give exactly one of volume (0-100) or change (-100..100)"}
        if volume is not None:
            target = round(float(volume))
            if not 0 <= target <= 100:
                return {"ok": False, "error": f"volume must be between 0 and 100, got {volume!r}"}
        else:
            assert change is not None
            target = max(0, min(100, actions.volume + round(float(change))))
        await actions.set_volume(target, "voice")
        return {"ok": True, "volume": actions.volume}

    return Tool(
        name="set_volume",
        description=(
            "Set the loudness of this speaker. Use volume for an absolute level (0 silent, 100 loudest) "
            "or change for a relative step (e.g. 10 = a bit louder, -10 = a bit quieter)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "volume": {"type": "integer", "minimum": 0, "maximum": 100, "description": "absolute volume 0-100"},
                "change": {"type": "integer", "minimum": -100, "maximum": 100, "description": "relative change"},
            },
            "additionalProperties": False,
        },
        handler=handler,
    )


def register_local_tools(registry: ToolRegistry, actions: LocalActions) -> None:
    """Add end_conversation and set_volume to ``registry``."""
    registry.add(_end_tool(actions))
    registry.add(_volume_tool(actions))


__all__ = ["LocalActions", "register_local_tools"]
