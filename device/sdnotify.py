"""systemd's sd_notify protocol (READY, WATCHDOG, STATUS, STOPPING) without a dependency."""

from __future__ import annotations

import logging
import os
import socket

_LOG = logging.getLogger(__name__)


class Notifier:
    """Sends state to systemd through $NOTIFY_SOCKET; does nothing when not run by systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, message: str) -> None:
        """Send one notification, e.g. ``"READY=1"``; errors are logged, never raised."""
        if self._addr is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._addr)
        except OSError as exc:
            _LOG.warning("sd_notify %s failed: %s", message.split("=")[0], exc)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
