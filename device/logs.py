"""Logging to stderr, with every configured secret redacted from every line.

Under systemd (stderr connected to the journal, which ``JOURNAL_STREAM`` names) each line gets a
``<N>`` syslog priority prefix instead of a timestamp, so ``journalctl -p warning`` and the
journal's colours work and the time is not printed twice.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import TextIO

from .config import Secret, Settings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal(stream: TextIO | None = None, env: dict[str, str] | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal's stream socket (systemd sets JOURNAL_STREAM)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, inode = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == inode


class JournalFormatter(logging.Formatter):
    """``<N>name: message``; continuation lines (tracebacks) get the same priority."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 3 if record.levelno > logging.WARNING else 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


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
    handler.setFormatter(JournalFormatter() if stderr_is_journal() else logging.Formatter(FORMAT))
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
