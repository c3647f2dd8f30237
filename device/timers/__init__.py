"""Timers and reminders: local tools, durable storage, ringing through the assistant, MQTT."""

from .model import Entry, Ringer, TimerError, TimerEvent
from .service import TimerService
from .tools import register_timer_tools

__all__ = ["Entry", "Ringer", "TimerError", "TimerEvent", "TimerService", "register_timer_tools"]
