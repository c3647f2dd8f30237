"""Ephemeral realtime keys: minted directly with the API key or by our token service.

A valid key is kept ready while the device is idle and refreshed before it expires, so a wake
costs no HTTP round trip. A key handed out by :meth:`TokenSource.get` counts as used (a session
was opened with it) and a new one is prefetched at once.

Secrets (API key, device secret, ephemeral keys) never appear in a log line or an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from device.config import Secret, Settings

_LOG = logging.getLogger(__name__)
_SECRETISH = re.compile(r"\b(?:sk|ek|rk)[-_][A-Za-z0-9_\-*.]{4,}")


@dataclass(frozen=True)
class EphemeralKey:
    """A key for one realtime session."""

    value: Secret
    expires_at: float  # unix seconds, as the issuer stated it
    # When it expires on this machine's monotonic clock (from the issuer's clock, so a Pi whose
    # wall clock is still wrong after boot does not misjudge it) and how long it lived when new.
    deadline: float = field(default=0.0, compare=False)
    lifetime: float = field(default=0.0, compare=False)

    def remaining(self) -> float:
        """Seconds until it expires."""
        return self.deadline - time.monotonic()


class TokenError(Exception):
    """No key could be obtained. The message names the cause and never holds a secret."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_time(headers: Any) -> float | None:
    date = headers.get("Date") if headers is not None else None
    if not date:
        return None
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None


def _scrub(text: str, *secrets: Secret | None) -> str:
    for s in secrets:
        if s is not None and s.reveal():
            text = text.replace(s.reveal(), "***")
    return _SECRETISH.sub("***", text)


class TokenSource:
    """Keeps an ephemeral key ready; mode from ``settings.auth.mode`` ("service" or "direct")."""

    def __init__(self, settings: Settings, *, http: aiohttp.ClientSession | None = None) -> None:
        self._auth = settings.auth
        self._rt = settings.realtime
        self._http = http
        self._own_http = http is None
        self._ready: EphemeralKey | None = None
        self._inflight: asyncio.Future[EphemeralKey] | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._blocked_until = 0.0
        self._closed = False
        self._last_problem: str | None = None
        self.fetches = 0
        """HTTP requests made (for tests and benchmarks)."""
        self.last_error: TokenError | None = None

    @property
    def mode(self) -> str:
        return self._auth.mode

    @property
    def endpoint(self) -> str:
        """Where keys come from (never secret)."""
        if self.mode == "service":
            return self._auth.token_url
        return self._auth.api_base.rstrip("/") + "/realtime/client_secrets"

    @property
    def ready(self) -> bool:
        """A key is ready: :meth:`get` will not need HTTP."""
        key = self._ready
        return key is not None and key.remaining() >= self._floor(key)

    # ---- public API -----------------------------------------------------------------------

    async def start(self) -> None:
        """Prefetch a key and keep one ready (refreshed before it expires) until :meth:`close`."""
        if self.mode == "none":
            _LOG.warning("no way to get realtime keys: set auth.token_url (token service) or "
                         "auth.api_key_file / OPENAI_API_KEY (direct)")
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="token-refresh")

    async def get(self) -> EphemeralKey:
        """A key to open a session with: the ready one (no HTTP) or one fetched now."""
        for _ in range(3):
            key = self._take_ready()
            if key is not None:
                self._kick()
                return key
            await self._obtain()
        raise TokenError(f"keys from {self.endpoint} were taken by concurrent sessions; try again")

    async def probe(self) -> str:
        """For ``speaker check``: obtain a key now; raise :class:`TokenError` on failure."""
        key = await self._obtain()
        where = "token service" if self.mode == "service" else "direct (API key)"
        return f"{where} {self.endpoint}: key obtained, valid for {key.remaining():.0f} s"

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
        if self._http is not None and self._own_http:
            await self._http.close()
            self._http = None
        self._ready = None

    # ---- internals ------------------------------------------------------------------------

    @staticmethod
    def _floor(key: EphemeralKey) -> float:
        """A key with less than this left is not handed out (the connect must still succeed)."""
        return min(10.0, 0.2 * key.lifetime)

    def _margin(self, key: EphemeralKey) -> float:
        """Refresh a ready key when this much of its life is left."""
        return max(2 * self._floor(key), 0.25 * key.lifetime)

    def _take_ready(self) -> EphemeralKey | None:
        key, self._ready = self._ready, None
        if key is not None and key.remaining() >= self._floor(key):
            return key
        return None

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, seconds))
        self._wake.clear()

    async def _obtain(self) -> EphemeralKey:
        """One HTTP fetch shared by everyone waiting; the key lands in ``_ready``."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._request())
        return await asyncio.shield(self._inflight)

    async def _run(self) -> None:
        backoff = 1.0
        while not self._closed:
            key = self._ready
            if key is not None:
                due = key.remaining() - self._margin(key)
                if due > 0:
                    await self._sleep(due)
                    continue
            blocked = self._blocked_until - time.monotonic()
            if blocked > 0:
                await self._sleep(blocked)
                continue
            try:
                await self._obtain()
                backoff = 1.0
            except TokenError as exc:
                if exc.status in (401, 403):
                    backoff = max(backoff, 30.0)  # a refused device will not be let in by hammering
                wait = exc.retry_after if exc.retry_after is not None else backoff
                backoff = min(backoff * 2, 60.0)
                await self._sleep(wait)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the refresher die
                _LOG.exception("token refresh failed unexpectedly")
                await self._sleep(backoff)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._own_http = True
        return self._http

    def _request_spec(self) -> tuple[dict[str, str], dict[str, Any], Secret]:
        auth = self._auth
        if self.mode == "service":
            assert auth.device_secret is not None
            return {"Authorization": f"Bearer {auth.device_secret.reveal()}"}, {}, auth.device_secret
        if self.mode == "direct":
            assert auth.api_key is not None
            body = {
                "expires_after": {"anchor": "created_at", "seconds": auth.key_ttl_s},
                "session": {"type": "realtime", "model": self._rt.model},
            }
            return {"Authorization": f"Bearer {auth.api_key.reveal()}"}, body, auth.api_key
        raise TokenError("no way to get realtime keys: set auth.token_url (token service) or "
                         "auth.api_key_file / OPENAI_API_KEY (direct mode)")

    def _rejected(self, status: int, secret: Secret) -> str:
        if self.mode == "service":
            return (f"token service {self.endpoint} rejected this device (HTTP {status}): check that "
                    f"auth.device_secret_file ({secret.source}) holds the secret registered for it on the service")
        return (f"{self.endpoint} rejected the API key from {secret.source} (HTTP {status}): "
                "check the key and that it may use the Realtime API")

    async def _request(self) -> EphemeralKey:
        try:
            key = await self._fetch()
        except TokenError as exc:
            self.last_error = exc
            # A 429 keeps its cause while blocked ("wait N s more" changes every second): said once.
            problem = "429" if exc.status == 429 else f"{exc.status}:{exc}"
            level = logging.DEBUG if problem == self._last_problem else logging.WARNING
            if exc.status in (401, 403):
                level = logging.DEBUG if problem == self._last_problem else logging.ERROR
            _LOG.log(level, "%s", exc)
            self._last_problem = problem
            raise
        if self._last_problem is not None:
            _LOG.info("realtime keys from %s work again", self.endpoint)
        self._last_problem = None
        self.last_error = None
        if not self._closed:
            self._ready = key
        return key

    async def _fetch(self) -> EphemeralKey:
        blocked = self._blocked_until - time.monotonic()
        if blocked > 0:
            raise TokenError(f"{self.endpoint} asked to wait {blocked:.0f} s more before the next key (HTTP 429)",
                             status=429, retry_after=blocked)
        headers, body, secret = self._request_spec()
        url = self.endpoint
        timeout = self._auth.timeout_s
        self.fetches += 1
        sent = time.monotonic()
        try:
            async with self._http_session().post(
                url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                status = resp.status
                text = await resp.text()
                resp_headers = resp.headers
        except asyncio.TimeoutError:
            raise TokenError(f"{url} did not answer within {timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            why = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else type(exc).__name__
            raise TokenError(f"cannot reach {url}: {why}") from None
        except aiohttp.ClientError as exc:
            raise TokenError(f"request to {url} failed: {type(exc).__name__}") from None
        received = time.monotonic()

        if status in (401, 403):
            raise TokenError(self._rejected(status, secret), status=status)
        if status == 429:
            wait = _retry_after(resp_headers.get("Retry-After"))
            wait = 10.0 if wait is None else wait
            self._blocked_until = received + wait
            raise TokenError(f"{url} is rate limiting this device (HTTP 429); retrying in {wait:.0f} s",
                             status=429, retry_after=wait)
        if status != 200:
            detail = ""
            if status in (400, 404, 422):
                detail = ": " + _scrub(_error_message(text), secret)[:200]
            raise TokenError(f"{url} answered HTTP {status}{detail}", status=status)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        value = data.get("value") if isinstance(data, dict) else None
        expires_at = data.get("expires_at") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value or isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise TokenError(f"{url} answered 200 without a key (expected JSON with 'value' and 'expires_at')", status=status)
        now_server = _server_time(resp_headers) or time.time()
        lifetime = float(expires_at) - now_server
        if lifetime <= 0:
            raise TokenError(f"{url} returned a key that had already expired (expires_at {expires_at})", status=status)
        _LOG.debug("realtime key from %s in %.0f ms, valid %.0f s", url, (received - sent) * 1000, lifetime)
        return EphemeralKey(Secret(value, "ephemeral key"), float(expires_at), deadline=received + lifetime, lifetime=lifetime)


def _error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return text.strip()


__all__ = ["EphemeralKey", "TokenError", "TokenSource"]
