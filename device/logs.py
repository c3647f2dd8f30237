"""Logging to stderr, with every configured secret redacted from every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from .config import Secret, Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replaces secret values wherever they would appear in a formatted record."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        text = message
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            for secret in self._secrets:
                exc_text = exc_text.replace(secret, "***")
            record.exc_text = exc_text
            record.exc_info = None
        if text != message:
            record.msg, record.args = text, None
        return True


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value the settings hold."""
    found = [settings.auth.device_secret, settings.auth.api_key, settings.mqtt.password]
    found += [server.authorization for server in settings.mcp]
    return [s.reveal() for s in found if isinstance(s, Secret)]


def setup_logging(level: str = "info", secrets: Iterable[str] = ()) -> None:
    """Log to stderr at ``level``; redact ``secrets`` from every line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter that would print request details at debug level.
    for noisy in ("websockets", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # The MCP client logs every HTTP request (pings included) at info; the bridge says what matters.
    for noisy in ("httpx2", "httpcore2", "mcp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
