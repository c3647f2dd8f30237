"""The timer tools the model can call: set_timer, cancel_timer, list_timers, adjust_timer, set_reminder."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from device.tools.registry import Tool, ToolRegistry

from .model import TimerError
from .parse import (
    DURATION_HELP,
    ends_phrase,
    format_duration,
    parse_duration,
    parse_signed_duration,
    parse_time_of_day,
)
from .service import TimerService

_DURATION_SCHEMA = {
    "type": ["number", "string"],
    "description": (
        "How long: a number of seconds (e.g. 600), or a string with units: \"10m\", \"1h30m\", "
        "\"90 seconds\", \"2 hours\", or ISO 8601 \"PT10M\". From 1 second to 24 hours."
    ),
}
_LABEL_SCHEMA = {
    "type": "string",
    "description": "Optional short name the person gave the timer, e.g. \"pasta\" or \"eggs\" (without the word timer).",
}


def _check_args(args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise TimerError(f"unknown argument {unknown[0]!r}; this tool takes {', '.join(sorted(allowed)) or 'none'}")


def _run(fn: Any) -> Any:
    async def handler(args: dict[str, Any]) -> dict[str, Any]:
        try:
            return fn(args)
        except TimerError as exc:
            return {"ok": False, "error": str(exc)}

    return handler


def timer_tools(service: TimerService) -> list[Tool]:
    """The five tools bound to ``service``."""

    def set_timer(args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"duration", "label"})
        if "duration" not in args:
            raise TimerError(f"give the duration: {DURATION_HELP}")
        seconds = parse_duration(args["duration"])
        entry = service.set_timer(seconds, args.get("label"), source="voice")
        d = service.describe(entry)
        say = f"{format_duration(entry.duration_s)}, ends {ends_phrase(entry.ends_at, service.zone, service.clock.time())}"
        if entry.label:
            say = f"{entry.label} timer: {say}"
        return {"ok": True, "timer": d, "summary": say}

    def cancel_timer(args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"label", "all"})
        every = args.get("all", False)
        if not isinstance(every, bool):
            raise TimerError("all must be true or false")
        label = args.get("label")
        if isinstance(label, str) and label.strip().casefold() in ("all", "all timers", "every timer"):
            every = True
        gone = service.cancel(label, all_timers=every, source="voice")
        return {"ok": True, "cancelled": [e.name for e in gone], "left": len(service.entries())}

    def list_timers(args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, set())
        items = [service.describe(e) for e in service.entries()]
        return {"ok": True, "count": len(items), "timers": items}

    def adjust_timer(args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"label", "delta"})
        if "delta" not in args:
            raise TimerError("give delta: the time to add (\"+5m\", 300) or take away (\"-2m\", -120)")
        delta = parse_signed_duration(args["delta"])
        entry = service.adjust(args.get("label"), delta, source="voice")
        d = service.describe(entry)
        ends = ends_phrase(entry.ends_at, service.zone, service.clock.time())
        return {"ok": True, "timer": d, "summary": f"{entry.name}: {d['remaining']} left, ends {ends}"}

    def set_reminder(args: dict[str, Any]) -> dict[str, Any]:
        _check_args(args, {"at", "text"})
        if "at" not in args or "text" not in args:
            raise TimerError("give both at (a time of day) and text (what to remind of)")
        now = datetime.fromtimestamp(service.clock.time(), service.zone)
        when = parse_time_of_day(args["at"], now, service.zone)
        entry = service.set_reminder(when, args["text"], source="voice")
        d = service.describe(entry)
        due = ends_phrase(entry.ends_at, service.zone, service.clock.time())
        return {"ok": True, "reminder": d, "summary": f"reminder {due}: {entry.text}"}

    return [
        Tool(
            name="set_timer",
            description=(
                "Start a countdown timer on this speaker (it rings when done, even without internet). "
                "Several timers can run at once; give each a label when there is more than one. "
                "Answer with the summary, e.g. \"10 minutes, ends at 18:42\"."
            ),
            parameters={
                "type": "object",
                "properties": {"duration": _DURATION_SCHEMA, "label": _LABEL_SCHEMA},
                "required": ["duration"],
                "additionalProperties": False,
            },
            handler=_run(set_timer),
        ),
        Tool(
            name="cancel_timer",
            description=(
                "Cancel a running timer or a reminder by its label (or words of the reminder), "
                "or every timer with all=true. Without a label it cancels the only one running."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "label": {"type": "string", "description": "the timer's label, e.g. \"pasta\", or words of a reminder"},
                    "all": {"type": "boolean", "description": "true: cancel every timer (reminders stay)"},
                },
                "additionalProperties": False,
            },
            handler=_run(cancel_timer),
        ),
        Tool(
            name="list_timers",
            description="The running timers and reminders: label or text, time remaining, and when each ends (local time).",
            parameters={"type": "object", "properties": {}, "additionalProperties": False},
            handler=_run(list_timers),
        ),
        Tool(
            name="adjust_timer",
            description="Add time to a running timer or take some away (\"add 5 minutes to the pasta timer\").",
            parameters={
                "type": "object",
                "properties": {
                    "label": {"type": "string", "description": "the timer's label; may be left out when only one timer runs"},
                    "delta": {
                        "type": ["number", "string"],
                        "description": "seconds to add (negative: take away), or a signed string like \"+5m\", \"-2 minutes\"",
                    },
                },
                "required": ["delta"],
                "additionalProperties": False,
            },
            handler=_run(adjust_timer),
        ),
        Tool(
            name="set_reminder",
            description=(
                "Remind the person at a time of day in this home's time zone: the speaker rings and says the text. "
                "For \"in 20 minutes\" use set_timer instead."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "at": {
                        "type": "string",
                        "description": (
                            "a time of day on the 24-hour clock (\"07:00\", \"19:30\") or with am/pm (\"7:30 pm\"); "
                            "\"7\" means the next 07:00. Or an ISO date-time \"2026-11-28T07:00\" for another day."
                        ),
                    },
                    "text": {"type": "string", "description": "what to say, e.g. \"put the bins out\""},
                },
                "required": ["at", "text"],
                "additionalProperties": False,
            },
            handler=_run(set_reminder),
        ),
    ]


def register_timer_tools(registry: ToolRegistry, service: TimerService) -> None:
    """Add the timer tools to ``registry``."""
    for tool in timer_tools(service):
        registry.add(tool)


__all__ = ["register_timer_tools", "timer_tools"]
