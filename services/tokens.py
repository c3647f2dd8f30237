"""The token service: mints short-lived realtime keys for the speakers it knows.

The API key lives only here, on the home server. A speaker proves who it is with its device secret
(``Authorization: Bearer <secret>``) and gets an ephemeral key minted upstream with the service's
session policy. Commands::

    speaker-tokens --config PATH                    # serve
    speaker-tokens add-device NAME --config PATH    # new device: stores the hash, prints the secret once

``SIGHUP`` re-reads the config (devices, policy, limits, API key file) without dropping requests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import signal
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from device.config import ConfigError
from device.sdnotify import Notifier

from .tokens_config import DEVICE_ID_PATTERN, TokenServiceConfig, hash_secret, load_config

_LOG = logging.getLogger("speaker_tokens")
_ACCESS = logging.getLogger("speaker_tokens.access")

TOKEN_PATH = "/v1/realtime/token"
DEFAULT_UPSTREAM_RETRY_S = 5  # Retry-After to pass on when an upstream 429 names none


class RateLimiter:
    """At most ``per_minute`` hits per key in any sliding 60 s window."""

    def __init__(self, per_minute: int, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, collections.deque[float]] = {}

    def hit(self, key: str) -> float:
        """Record a hit and return 0, or return the seconds until one is allowed (nothing recorded)."""
        now = self._clock()
        q = self._hits.setdefault(key, collections.deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.per_minute:
            return q[len(q) - self.per_minute] + self.window_s - now
        q.append(now)
        return 0.0

    def forget_except(self, keys: set[str]) -> None:
        """Drop the history of devices no longer configured."""
        for key in list(self._hits):
            if key not in keys:
                del self._hits[key]


class UpstreamError(Exception):
    """The upstream did not mint a key; ``status`` is what the device gets."""

    def __init__(self, status: int, code: str, message: str, *, detail: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail  # for the access log: never holds the key or upstream's text
        self.retry_after = retry_after


_KEYLIKE = re.compile(r"(?i)\b(bearer\s+)\S+|\b(sk-|ek_)[A-Za-z0-9_\-*.]+")


class RedactingFilter(logging.Filter):
    """Last line of defence: keeps the API key and anything bearer-like out of every log line."""

    def __init__(self, api_key: str = "") -> None:
        super().__init__()
        self.api_key = api_key

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True

    def redact(self, text: str) -> str:
        if self.api_key and self.api_key in text:
            text = text.replace(self.api_key, "[redacted]")
        return _KEYLIKE.sub(lambda m: (m.group(1) or m.group(2) or "") + "[redacted]", text)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class TokenService:
    """The aiohttp application and its state (devices, limiter, upstream client)."""

    def __init__(self, cfg: TokenServiceConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._digests = tuple((d.id, d.digest) for d in cfg.devices)
        self.limiter = RateLimiter(cfg.limits.per_device_per_minute, clock=clock)
        self._http: aiohttp.ClientSession | None = None
        self.upstream_ok: bool | None = None  # result of the last mint, for /healthz
        self._last_problem: str | None = None
        self.minted = 0

    # -- configuration ---------------------------------------------------------------------------

    def reload(self, cfg: TokenServiceConfig) -> None:
        """Apply a re-read config: devices, policy, limits and API key take effect at once."""
        old = self.cfg
        if (cfg.server.host, cfg.server.port, bool(cfg.ssl_context)) != (old.server.host, old.server.port, bool(old.ssl_context)):
            _LOG.warning("changes to server.host, server.port or turning TLS on/off take effect after a restart")
        elif old.ssl_context is not None:
            # renewed certificates: the listening socket's context takes the new chain for new handshakes
            try:
                old.ssl_context.load_cert_chain(cfg.server.tls_cert_file, cfg.server.tls_key_file)
            except (OSError, ValueError) as exc:
                _LOG.error("reload: cannot load the TLS certificate again (%s); the old one stays", type(exc).__name__)
        cfg = dataclasses.replace(cfg, ssl_context=old.ssl_context)
        self.cfg = cfg
        self._digests = tuple((d.id, d.digest) for d in cfg.devices)
        self.limiter.per_minute = cfg.limits.per_device_per_minute
        self.limiter.forget_except({d.id for d in cfg.devices})

    def identify(self, secret: str) -> str | None:
        """The device whose secret this is, or None. Compares against every device in constant time
        each, and never stops early, so timing does not tell which device (or whether one) matched."""
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for device_id, expected in self._digests:
            if hmac.compare_digest(digest, expected):
                found = device_id
        return found

    # -- HTTP ------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._access_log], client_max_size=64 * 1024)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_get("/healthz", self._healthz)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=60),
            headers={"User-Agent": "speaker-tokens"},
        )

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @web.middleware
    async def _access_log(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:  # a bug: answer 500, log the type only (messages may hold request data)
            _LOG.error("internal error in %s %s: %s", request.method, request.path, type(exc).__name__)
            resp = _error(500, "internal_error", "internal error in the token service")
            return resp
        finally:
            ms = (time.perf_counter() - t0) * 1000
            detail = request.get("detail")
            _ACCESS.info(
                "device=%s status=%d latency_ms=%.1f method=%s path=%s remote=%s%s",
                request.get("device", "-"),
                status,
                ms,
                request.method,
                request.path,  # the path only: a query string is the client's text
                request.remote or "-",
                f" {detail}" if detail else "",
            )

    async def _healthz(self, _request: web.Request) -> web.Response:
        upstream = {None: "unknown", True: "ok", False: "failing"}[self.upstream_ok]
        return web.json_response({"status": "ok", "upstream": upstream, "minted": self.minted})

    async def _token(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            request["detail"] = "auth=missing"
            return _error(401, "unauthorized", "missing 'Authorization: Bearer <device secret>'", {"WWW-Authenticate": "Bearer"})
        device = self.identify(secret)
        if device is None:
            request["detail"] = "auth=unknown"
            return _error(401, "unauthorized", "unknown device secret", {"WWW-Authenticate": "Bearer"})
        request["device"] = device
        wait = self.limiter.hit(device)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            request["detail"] = f"rate_limited retry_after={retry}"
            return _error(
                429,
                "rate_limited",
                f"more than {self.limiter.per_minute} keys a minute for this device; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        try:
            value, expires_at = await self.mint()
        except UpstreamError as exc:
            request["detail"] = exc.detail
            headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
            return _error(exc.status, exc.code, exc.message, headers)
        return web.json_response({"value": value, "expires_at": expires_at}, headers={"Cache-Control": "no-store"})

    # -- upstream --------------------------------------------------------------------------------

    def policy_body(self) -> dict[str, Any]:
        """The client_secrets request body for the configured session policy."""
        p = self.cfg.session
        session: dict[str, Any] = {"type": "realtime", "model": p.model}
        if p.instructions:
            session["instructions"] = p.instructions
        if p.voice:
            session["audio"] = {"output": {"voice": p.voice}}
        return {"expires_after": {"anchor": "created_at", "seconds": p.key_ttl_s}, "session": session}

    async def mint(self) -> tuple[str, float]:
        """One ephemeral key from the upstream; raises UpstreamError with the status for the device."""
        assert self._http is not None, "service not started"
        up = self.cfg.upstream
        url = f"{up.api_base}/realtime/client_secrets"
        headers = {"Authorization": f"Bearer {self.cfg.api_key.reveal()}"}
        try:
            async with self._http.post(
                url, json=self.policy_body(), headers=headers, timeout=aiohttp.ClientTimeout(total=up.timeout_s)
            ) as resp:
                status = resp.status
                body = await resp.read()
                retry_header = resp.headers.get("Retry-After", "")
        except asyncio.TimeoutError:
            self.upstream_ok = False
            raise UpstreamError(
                504, "upstream_timeout", f"the upstream did not answer within {up.timeout_s:g} s", detail="upstream=timeout"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            self.upstream_ok = False
            raise UpstreamError(
                502, "upstream_unreachable", f"cannot reach the upstream ({type(exc).__name__})", detail=f"upstream=unreachable:{type(exc).__name__}"
            ) from None

        if status == 200:
            try:
                data = json.loads(body)
                value, expires_at = data["value"], data["expires_at"]
                if not isinstance(value, str) or not value or isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.upstream_ok = False
                raise UpstreamError(502, "upstream_bad_response", "the upstream answered without a key", detail="upstream=200-malformed") from None
            if self._last_problem is not None:
                _LOG.info("the upstream mints keys again")
                self._last_problem = None
            self.upstream_ok = True
            self.minted += 1
            return value, expires_at

        self.upstream_ok = False
        code = _upstream_code(body)
        detail = f"upstream={status}" + (f" upstream_code={code}" if code else "")
        if status in (401, 403):
            self._problem(f"the upstream rejected the API key from {self.cfg.api_key.source} (HTTP {status}{', ' + code if code else ''})")
            raise UpstreamError(502, "upstream_auth", f"the upstream rejected the API key (HTTP {status})", detail=detail)
        if status == 429:
            retry = _retry_after(retry_header)
            raise UpstreamError(503, "upstream_rate_limited", f"the upstream is rate limiting; retry in {retry} s", detail=detail, retry_after=retry)
        if 400 <= status < 500:
            # most likely the [session] policy (model, voice): say what the upstream said, for the admin
            why = _upstream_message(body).replace(self.cfg.api_key.reveal(), "[redacted]")[:300]
            self._problem(f"the upstream refused to mint (HTTP {status}{', ' + code if code else ''}): {why or 'no message'}; check [session] in {self.cfg.path}")
        raise UpstreamError(502, "upstream_error", f"the upstream failed (HTTP {status})", detail=detail)

    def _problem(self, message: str) -> None:
        """Log an upstream problem once at ERROR (then at DEBUG while it repeats)."""
        level = logging.DEBUG if message == self._last_problem else logging.ERROR
        self._last_problem = message
        _LOG.log(level, "%s", message)


def _upstream_code(body: bytes) -> str:
    """The upstream's machine-readable error code, if any; its message is never passed on, because
    upstream messages can quote part of the key."""
    try:
        err = json.loads(body).get("error")
        code = err.get("code") or err.get("type") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        return ""
    return code if isinstance(code, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", code) else ""


def _upstream_message(body: bytes) -> str:
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        return ""
    return msg if isinstance(msg, str) else ""


def _retry_after(value: str) -> int:
    try:
        return max(1, math.ceil(float(value)))
    except ValueError:
        return DEFAULT_UPSTREAM_RETRY_S


# -- process -------------------------------------------------------------------------------------


def setup_logging(level: str, redactor: RedactingFilter) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # journald stamps lines itself
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").disabled = True  # our middleware logs each request


def _warn_loose_permissions(cfg: TokenServiceConfig) -> None:
    for key, value in (("upstream.api_key_file", cfg.upstream.api_key_file), ("server.tls_key_file", cfg.server.tls_key_file)):
        if not value:
            continue
        try:
            mode = os.stat(Path(value).expanduser()).st_mode
        except OSError:
            continue
        if mode & 0o077:
            _LOG.warning("%s %s is readable by other users (mode %04o): chmod 600 it", key, value, mode & 0o777)


@dataclass
class Listening:
    """Where the service ended up listening."""

    url: str
    host: str
    port: int


async def serve(cfg: TokenServiceConfig, redactor: RedactingFilter | None = None, *, ready: Callable[[Listening], None] | None = None) -> None:
    """Run the service until SIGTERM/SIGINT; SIGHUP reloads the config file."""
    service = TokenService(cfg)
    runner = web.AppRunner(service.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, ssl_context=cfg.ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {exc.strerror or exc}") from None
    host, port = runner.addresses[0][:2]
    scheme = "https" if cfg.ssl_context else "http"
    where = Listening(f"{scheme}://{host}:{port}", host, port)
    _LOG.info(
        "listening on %s%s (%d device%s, upstream %s, API key from %s, keys for %s valid %d s, %d a minute per device)",
        where.url,
        TOKEN_PATH,
        len(cfg.devices),
        "" if len(cfg.devices) == 1 else "s",
        cfg.upstream.api_base,
        cfg.api_key.source,
        cfg.session.model,
        cfg.session.key_ttl_s,
        cfg.limits.per_device_per_minute,
    )
    _warn_loose_permissions(cfg)
    if not cfg.devices:
        _LOG.warning("no devices configured: every request gets 401 (add one with `speaker-tokens add-device NAME --config %s`)", cfg.path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    notifier = Notifier()

    def reload() -> None:
        notifier.notify("RELOADING=1")
        try:
            new = load_config(cfg.path)
        except ConfigError as exc:
            _LOG.error("reload failed, keeping the running config: %s", exc)
        else:
            service.reload(new)
            if redactor is not None:
                redactor.api_key = new.api_key.reveal()
            _LOG.info("reloaded %s: %d device%s", new.path, len(new.devices), "" if len(new.devices) == 1 else "s")
        notifier.notify("READY=1")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    notifier.notify("READY=1")
    if ready is not None:
        ready(where)
    try:
        await stop.wait()
    finally:
        notifier.notify("STOPPING=1")
        _LOG.info("stopping")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        notifier.close()


def add_device(name: str, config: str, secret_file: str | None = None) -> int:
    """Create a secret for a new device, append its hash to the config, print the secret once."""
    if not re.fullmatch(DEVICE_ID_PATTERN, name):
        raise ConfigError(f"device name {name!r} must be 1-64 letters, digits, '_' or '-'")
    path = Path(config)
    cfg = load_config(path, need_key=False)  # the file must be valid before we touch it
    if any(d.id == name for d in cfg.devices):
        raise ConfigError(f"{path}: device {name!r} already exists (remove its [[devices]] entry to replace it)")
    secret = secrets.token_urlsafe(32)
    entry = f'\n[[devices]]\nid = "{name}"\nsecret_hash = "{hash_secret(secret)}"\n'
    if secret_file:  # first, so that a failure here leaves the config untouched
        try:
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"--secret-file {secret_file} already exists; not overwriting it") from None
        except OSError as exc:
            raise ConfigError(f"--secret-file {secret_file}: cannot create it: {exc.strerror}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secret + "\n")
    try:
        _append_entry(path, entry, name)
    except BaseException:
        if secret_file:
            os.unlink(secret_file)
        raise
    if secret_file:
        print(f"added device {name!r} to {path}; its secret is in {secret_file} (mode 0600)", file=sys.stderr)
    else:
        print(secret)
        print(
            f"added device {name!r} to {path}. The line above is its secret, shown only this once:\n"
            f"put it in the speaker's auth.device_secret_file (mode 0600).",
            file=sys.stderr,
        )
    print("then reload the service: systemctl reload speaker-tokens (or send it SIGHUP)", file=sys.stderr)
    return 0


def _append_entry(path: Path, entry: str, name: str) -> None:
    # Append in place: keeps every comment, the file's owner and mode (a rewrite would not).
    try:
        fh = open(path, "r+", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the config for writing: {exc.strerror}") from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # two add-device runs at once must not interleave
        text = fh.read()
        sep = "" if not text or text.endswith("\n") else "\n"
        try:
            merged = tomllib.loads(text + sep + entry)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: cannot append a [[devices]] table to this file: {exc}") from None
        if [d.get("id") for d in merged.get("devices", [])].count(name) > 1:  # added meanwhile by another run
            raise ConfigError(f"{path}: device {name!r} already exists (remove its [[devices]] entry to replace it)")
        fh.seek(0, os.SEEK_END)
        fh.write(sep + entry)
        fh.flush()
        os.fsync(fh.fileno())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speaker-tokens", description="Mints ephemeral realtime keys for the speakers it knows.")
    parser.add_argument("--config", help="TOML config file")
    sub = parser.add_subparsers(dest="command")
    add = sub.add_parser("add-device", help="create a secret for a new device; prints it once")
    add.add_argument("name", help="device id (letters, digits, '_' and '-')")
    add.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    add.add_argument("--secret-file", help="write the secret to this new file (mode 0600) instead of printing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``speaker-tokens``."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.config:
        parser.error("--config PATH is required")
    try:
        if args.command == "add-device":
            return add_device(args.name, args.config, args.secret_file)
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"speaker-tokens: {exc}", file=sys.stderr)
        return 2
    redactor = RedactingFilter(cfg.api_key.reveal())
    setup_logging(cfg.log.level, redactor)
    try:
        asyncio.run(serve(cfg, redactor))
    except RuntimeError as exc:
        _LOG.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
