"""Configuration of the token service (``speaker-tokens``): TOML -> frozen, validated settings.

Validation reuses the device config's helpers, so errors read the same way: one
:class:`~device.config.ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from device.config import ConfigError, Secret, build_section, parse_toml, read_secret

# A device secret is `secrets.token_urlsafe(32)`: 256 random bits. One unsalted SHA-256 is enough
# for a secret that cannot be guessed (a slow password hash would only cost CPU per request).
HASH_PREFIX = "sha256:"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _f(default: Any, doc: str, **meta: Any) -> Any:
    meta["doc"] = doc
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ServerConfig:
    host: str = _f("127.0.0.1", "address to listen on; 0.0.0.0 = every interface (needed for speakers on the LAN)")
    port: int = _f(8780, "TCP port; 0 = any free port (logged at start)", range=(0, 65535))
    tls_cert_file: str = _f("", "TLS certificate chain (PEM); empty = plain HTTP")
    tls_key_file: str = _f("", "TLS private key (PEM), with tls_cert_file")


@dataclass(frozen=True)
class UpstreamConfig:
    api_base: str = _f("https://api.openai.com/v1", "API base; keys are minted at {api_base}/realtime/client_secrets")
    api_key_file: str = _f("", "file holding the API key; empty = the OPENAI_API_KEY environment variable")
    timeout_s: float = _f(10.0, "time the upstream has to mint a key before the device gets 504", range=(0.1, 120.0))
    api_key: Secret | None = field(default=None, metadata={"internal": True})


@dataclass(frozen=True)
class SessionPolicy:
    model: str = _f("gpt-realtime", "realtime model the keys are minted for")
    voice: str = _f("marin", "output voice; empty = the server's default")
    key_ttl_s: int = _f(600, "lifetime of a minted key in seconds", range=(10, 7200))
    instructions: str = _f("", "default instructions baked into the key's session; empty = none")


@dataclass(frozen=True)
class LimitsConfig:
    per_device_per_minute: int = _f(10, "keys one device may get in any 60 s; more are answered 429", range=(1, 100000))


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = _f("info", "log level")


@dataclass(frozen=True)
class DeviceEntry:
    """One speaker allowed to get keys: its id and the hash of its secret (never the secret)."""

    id: str = _f("", "device name, shown in the access log", required=True, pattern=DEVICE_ID_PATTERN)
    secret_hash: str = _f("", "'sha256:' + hex digest of the device secret (written by add-device)", required=True)

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.secret_hash[len(HASH_PREFIX):])


@dataclass(frozen=True)
class TokenServiceConfig:
    """The whole token service configuration."""

    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    session: SessionPolicy = field(default_factory=SessionPolicy)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    devices: tuple[DeviceEntry, ...] = ()
    ssl_context: ssl.SSLContext | None = None

    @property
    def api_key(self) -> Secret:
        key = self.upstream.api_key
        assert key is not None, "config loaded without its API key"
        return key


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "session": SessionPolicy,
    "limits": LimitsConfig,
    "log": LogConfig,
}


def hash_secret(secret: str) -> str:
    """The form a device secret is stored in: ``sha256:<hex>``."""
    return HASH_PREFIX + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _devices(data: dict[str, Any], file: str) -> tuple[DeviceEntry, ...]:
    raw = data.get("devices", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{file}: 'devices' must be an array of tables ([[devices]]), got {type(raw).__name__}")
    out: list[DeviceEntry] = []
    ids: set[str] = set()
    hashes: set[str] = set()
    for i, table in enumerate(raw):
        dev = build_section(DeviceEntry, table, f"devices[{i}]", file)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", dev.secret_hash):
            raise ConfigError(
                f"{file}: 'devices[{i}].secret_hash' must be 'sha256:' followed by 64 lowercase hex digits "
                f"(use `speaker-tokens add-device`), got a value of {len(dev.secret_hash)} characters"
            )
        if dev.id in ids:
            raise ConfigError(f"{file}: 'devices[{i}].id' {dev.id!r} is used by another device")
        if dev.secret_hash in hashes:
            raise ConfigError(f"{file}: 'devices[{i}].secret_hash' is the same as another device's: give each device its own secret")
        ids.add(dev.id)
        hashes.add(dev.secret_hash)
        out.append(dev)
    return tuple(out)


def _ssl_context(server: ServerConfig, file: str) -> ssl.SSLContext | None:
    cert, key = server.tls_cert_file, server.tls_key_file
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "server.tls_cert_file" if not cert else "server.tls_key_file"
        raise ConfigError(f"{file}: '{missing}' is required when the other TLS file is set")
    for name, value in (("server.tls_cert_file", cert), ("server.tls_key_file", key)):
        p = Path(value).expanduser()
        if not p.is_file():
            raise ConfigError(f"{file}: '{name}': file {p} does not exist")
        if not os.access(p, os.R_OK):
            raise ConfigError(f"{file}: '{name}': file {p} is not readable by this user")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"{file}: 'server.tls_cert_file'/'server.tls_key_file': cannot load the certificate and key: {reason}") from None
    return ctx


def load_config(
    path: str | os.PathLike[str],
    env: typing.Mapping[str, str] | None = None,
    *,
    need_key: bool = True,
) -> TokenServiceConfig:
    """Load and validate the token service config; ``need_key=False`` skips the API key and TLS files
    (for ``add-device``, which may run as a user who cannot read them)."""
    env = os.environ if env is None else env
    p = Path(path)
    file = str(p)
    data = parse_toml(p)
    unknown = sorted(set(data) - set(_SECTIONS) - {"devices"})
    if unknown:
        known = ", ".join(sorted([*_SECTIONS, "devices"]))
        raise ConfigError(f"{file}: unknown section [{unknown[0]}] (known: {known})")
    sections = {name: build_section(cls, data.get(name, {}), name, file) for name, cls in _SECTIONS.items()}
    devices = _devices(data, file)

    up: UpstreamConfig = sections["upstream"]
    if not up.api_base.startswith(("http://", "https://")):
        raise ConfigError(f"{file}: 'upstream.api_base' must be an http:// or https:// URL, got {up.api_base!r}")
    up = UpstreamConfig(api_base=up.api_base.rstrip("/"), api_key_file=up.api_key_file, timeout_s=up.timeout_s)
    ctx = None
    if need_key:
        if up.api_key_file:
            key = read_secret(up.api_key_file, "upstream.api_key_file", file)
        elif env.get("OPENAI_API_KEY", "").strip():
            key = Secret(env["OPENAI_API_KEY"].strip(), "OPENAI_API_KEY")
        else:
            raise ConfigError(f"{file}: 'upstream.api_key_file' is not set and OPENAI_API_KEY is empty: the service needs the API key")
        up = UpstreamConfig(api_base=up.api_base, api_key_file=up.api_key_file, timeout_s=up.timeout_s, api_key=key)
        ctx = _ssl_context(sections["server"], file)
    sections["upstream"] = up

    policy: SessionPolicy = sections["session"]
    if not policy.model.strip():
        raise ConfigError(f"{file}: 'session.model' must not be empty")
    return TokenServiceConfig(path=p, devices=devices, ssl_context=ctx, **sections)


__all__ = [
    "DEVICE_ID_PATTERN",
    "DeviceEntry",
    "LimitsConfig",
    "ServerConfig",
    "SessionPolicy",
    "TokenServiceConfig",
    "UpstreamConfig",
    "hash_secret",
    "load_config",
]
