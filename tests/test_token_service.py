"""The token service (`speaker-tokens`) as a real subprocess on a free port, minting through a
local upstream that speaks the client_secrets API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from services.simulator import RealtimeSimulator
from services.tokens import RateLimiter
from services.tokens_config import hash_secret

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-" + "Q7xv3LmZ9" * 4
TOKEN_PATH = "/v1/realtime/token"


# -- the upstream ---------------------------------------------------------------------------------
# The realtime simulator (tests/rig/simulator.py: `simulator` fixture, its own thread and loop) is the
# upstream: it checks the API key, validates the minted session against the SDK's types, and fails
# on demand (`fail_client_secrets` = 401 / 429 / 500 / "timeout").

pytestmark = pytest.mark.simulator(api_key=API_KEY)


class QuotingUpstream:
    """A hostile upstream for the leak test: its 401 quotes the Authorization header it got (real
    upstreams quote part of the key), and its 200 may come without a key."""

    def __init__(self) -> None:
        self.mode = "401"  # 401 | garbage
        self.rejections: list[str] = []
        self.api_base = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/realtime/client_secrets", self._mint)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.api_base = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _mint(self, request: web.Request) -> web.Response:
        if self.mode == "garbage":
            return web.Response(text="<html>ok</html>", status=200)
        text = json.dumps({"error": {"message": f"Incorrect API key provided: {request.headers.get('Authorization')}", "code": "invalid_api_key"}})
        self.rejections.append(text)
        return web.Response(text=text, status=401, content_type="application/json")


# -- the service ----------------------------------------------------------------------------------


@dataclass
class Leaks:
    """Everything the service said (log lines; response bodies and headers) and what it must never
    say: the API key and device secrets nowhere, minted keys in no log line."""

    secrets: set[str] = field(default_factory=lambda: {API_KEY})
    logs: list[str] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)

    def check(self, minted: list[str]) -> None:
        logs, responses = "\n".join(self.logs), "\n".join(self.responses)
        for s in self.secrets:
            assert s not in logs, f"a secret ({s[:6]}...) appears in a log line"
            assert s not in responses, f"a secret ({s[:6]}...) appears in a response"
        for m in minted:
            assert m not in logs, f"a minted key ({m[:6]}...) appears in a log line"


@pytest.fixture
def leaks() -> Leaks:
    return Leaks()


class Service:
    """`python -m services.tokens --config PATH` with its stderr collected line by line."""

    def __init__(self, config: Path, leaks: Leaks) -> None:
        self.config = config
        self.leaks = leaks
        self.lines: list[str] = []
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    async def start(self, timeout: float = 20.0, env_extra: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "NOTIFY_SOCKET")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(env_extra or {})
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.tokens", "--config", str(self.config),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        line = await self.wait_for(r"listening on (https?://[\d.]+:\d+)", timeout)
        self.url = re.search(r"(https?://[\d.]+:\d+)", line).group(1)  # type: ignore[union-attr]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.leaks.logs.append(line)
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, pattern: str, timeout: float = 5.0, start: int = 0, count: int = 1) -> str:
        """The ``count``-th line from index ``start`` on that matches."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = [line for line in self.lines[start:] if re.search(pattern, line)]
            if len(found) >= count:
                return found[count - 1]
            if self.proc is not None and self.proc.returncode is not None and self._reader is not None and self._reader.done():
                raise AssertionError(f"service exited ({self.proc.returncode}) without /{pattern}/:\n" + "\n".join(self.lines))
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no line /{pattern}/ within {timeout} s:\n" + "\n".join(self.lines))
            self._new_line.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    def access(self, device: str | None = None) -> list[str]:
        return [l for l in self.lines if "speaker_tokens.access" in l and (device is None or f"device={device} " in l)]

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode  # type: ignore[return-value]


def write_config(
    tmp_path: Path,
    api_base: str,
    devices: dict[str, str],
    *,
    rate: int = 10,
    ttl: int = 600,
    timeout_s: float = 5.0,
    extra_server: str = "",
    level: str = "info",
) -> Path:
    key_file = tmp_path / "openai.key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    text = f"""# test config
[server]
host = "127.0.0.1"
port = 0
{extra_server}
[upstream]
api_base = "{api_base}"
api_key_file = "{key_file}"
timeout_s = {timeout_s}
[session]
model = "gpt-realtime"
voice = "cedar"
key_ttl_s = {ttl}
instructions = "Be brief."
[limits]
per_device_per_minute = {rate}
[log]
level = "{level}"
"""
    for name, secret in devices.items():
        text += f'\n[[devices]]\nid = "{name}"\nsecret_hash = "{hash_secret(secret)}"\n'
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    return path


def new_secrets(leaks: Leaks, names: list[str]) -> dict[str, str]:
    out = {n: secrets.token_urlsafe(32) for n in names}
    leaks.secrets.update(out.values())
    return out


@pytest.fixture
async def run_service(leaks: Leaks, simulator: RealtimeSimulator) -> AsyncIterator[Any]:
    started: list[Service] = []

    async def start(config: Path, env: dict[str, str] | None = None) -> Service:
        svc = Service(config, leaks)
        started.append(svc)
        await svc.start(env_extra=env)
        return svc

    yield start
    codes = [await s.stop() for s in started]
    assert codes == [0] * len(codes), f"service exit codes {codes} (expected 0 after SIGTERM)"
    leaks.check(simulator.minted)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    elapsed: float


async def ask(http: aiohttp.ClientSession, svc: Service, leaks: Leaks, secret: str | None, *, scheme: str = "Bearer", method: str = "POST", path: str = TOKEN_PATH) -> Answer:
    headers = {} if secret is None else {"Authorization": f"{scheme} {secret}"}
    t0 = time.perf_counter()
    async with http.request(method, svc.url + path, headers=headers) as resp:
        raw = await resp.text()
        elapsed = time.perf_counter() - t0
        leaks.responses.append(raw)
        leaks.responses.extend(f"{k}: {v}" for k, v in resp.headers.items())
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw}
        return Answer(resp.status, body, dict(resp.headers), elapsed)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


# -- tests ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_device_gets_a_key_minted_with_the_policy(tmp_path, simulator, run_service, http, leaks) -> None:
    sec = new_secrets(leaks, ["kitchen", "bedroom"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec, ttl=900))

    a = await ask(http, svc, leaks, sec["kitchen"])
    assert a.status == 200, a.body
    assert set(a.body) == {"value", "expires_at"}, "only the key and its expiry go to the device"
    assert a.body["value"] == simulator.minted[-1]
    assert abs(a.body["expires_at"] - (time.time() + 900)) < 30

    # minted with the policy, which the simulator validated against the SDK's session type
    sent = simulator.secret_bodies[-1]
    assert sent["expires_after"] == {"anchor": "created_at", "seconds": 900}
    assert sent["session"]["type"] == "realtime"
    assert sent["session"]["model"] == "gpt-realtime"
    assert sent["session"]["audio"]["output"]["voice"] == "cedar"
    assert sent["session"]["instructions"] == "Be brief."
    assert simulator.keys[a.body["value"]].session == sent["session"]

    b = await ask(http, svc, leaks, sec["bedroom"])
    assert b.status == 200 and b.body["value"] != a.body["value"]

    health = await ask(http, svc, leaks, None, method="GET", path="/healthz")
    assert health.status == 200 and health.body["status"] == "ok" and health.body["upstream"] == "ok"

    line = await svc.wait_for(r"device=kitchen status=200")
    assert re.search(r"latency_ms=\d+\.\d", line), line
    await svc.wait_for(r"device=bedroom status=200")
    await svc.wait_for(r"device=- status=200 .*path=/healthz")


@pytest.mark.timeout(60)
async def test_unknown_or_missing_secret_is_401_and_never_reaches_upstream(tmp_path, simulator, run_service, http, leaks) -> None:
    sec = new_secrets(leaks, ["kitchen"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec))
    wrong = new_secrets(leaks, ["wrong"])["wrong"]
    cases = [
        (wrong, "Bearer"),  # a well-formed secret that is not registered
        (sec["kitchen"][:-1], "Bearer"),  # a prefix of a real one
        (sec["kitchen"], "Basic"),  # right secret, wrong scheme
        (hash_secret(sec["kitchen"]), "Bearer"),  # the stored hash is not a credential
        ("", "Bearer"),
        (None, "Bearer"),  # no header at all
    ]
    for secret, scheme in cases:
        a = await ask(http, svc, leaks, secret, scheme=scheme)
        assert a.status == 401, (scheme, a.body)
        assert a.headers.get("WWW-Authenticate") == "Bearer"
        assert "value" not in a.body and a.body["error"]["message"]
    assert simulator.secret_requests == 0, "a request without a valid secret must not mint a key"
    await svc.wait_for(r"device=- status=401", count=len(cases))
    ok = await ask(http, svc, leaks, sec["kitchen"])
    assert ok.status == 200


@pytest.mark.timeout(60)
async def test_rate_limit_per_device_with_retry_after(tmp_path, simulator, run_service, http, leaks) -> None:
    sec = new_secrets(leaks, ["kitchen", "bedroom"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec, rate=3))
    statuses = [(await ask(http, svc, leaks, sec["kitchen"])).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = await ask(http, svc, leaks, sec["kitchen"])
    assert limited.status == 429, limited.body
    retry = int(limited.headers["Retry-After"])
    assert 50 <= retry <= 60, f"the first of 3 keys was minted just now, so the next is ~60 s away, got {retry}"
    assert simulator.secret_requests == 3, "a limited request must not reach the upstream"
    # another device is not affected
    assert (await ask(http, svc, leaks, sec["bedroom"])).status == 200
    await svc.wait_for(r"device=kitchen status=429 .*retry_after=\d+")


def test_rate_limiter_window_slides() -> None:
    now = [1000.0]
    rl = RateLimiter(2, clock=lambda: now[0])
    assert rl.hit("a") == 0 and rl.hit("a") == 0
    now[0] += 10
    assert rl.hit("a") == pytest.approx(50)  # the first hit leaves the window at t=1060
    assert rl.hit("b") == 0
    now[0] += 50  # both hits of t=1000 have left the window
    assert rl.hit("a") == 0 and rl.hit("a") == 0
    assert rl.hit("a") == pytest.approx(60)
    now[0] += 59.9
    assert rl.hit("a") == pytest.approx(0.1)


@pytest.mark.timeout(90)
async def test_upstream_failures_map_to_clear_statuses(tmp_path, simulator, run_service, http, leaks) -> None:
    sec = new_secrets(leaks, ["kitchen"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec, rate=1000, timeout_s=0.5))
    k = sec["kitchen"]

    for code in (401, 403):
        simulator.fail_client_secrets = code
        a = await ask(http, svc, leaks, k)
        assert a.status == 502, a.body
        assert f"the upstream rejected the API key (HTTP {code})" == a.body["error"]["message"]
        await svc.wait_for(rf"device=kitchen status=502 .*upstream={code}")
    await svc.wait_for(r"ERROR speaker_tokens: the upstream rejected the API key")

    simulator.fail_client_secrets, simulator.retry_after_s = 429, 7
    a = await ask(http, svc, leaks, k)
    assert a.status == 503 and a.headers["Retry-After"] == "7", (a.status, a.headers)

    simulator.fail_client_secrets = 500
    a = await ask(http, svc, leaks, k)
    assert a.status == 502 and "HTTP 500" in a.body["error"]["message"]

    simulator.fail_client_secrets = 400  # e.g. a model or voice in [session] the upstream refuses
    a = await ask(http, svc, leaks, k)
    assert a.status == 502 and "HTTP 400" in a.body["error"]["message"]
    await svc.wait_for(r"ERROR speaker_tokens: the upstream refused to mint \(HTTP 400, simulated\): simulated failure; check \[session\]")

    simulator.fail_client_secrets = "timeout"
    a = await ask(http, svc, leaks, k)
    assert a.status == 504, a.body
    assert a.elapsed < 5, f"timeout_s = 0.5 but the device waited {a.elapsed:.1f} s"
    health = await ask(http, svc, leaks, None, method="GET", path="/healthz")
    assert health.body["upstream"] == "failing"

    simulator.fail_client_secrets = None
    a = await ask(http, svc, leaks, k)
    assert a.status == 200 and set(a.body) == {"value", "expires_at"}
    assert a.body["value"] == simulator.minted[-1] and len(simulator.minted) == 1

    assert simulator.runner is not None
    simulator.runner.call(simulator.stop())  # nobody listening any more
    a = await ask(http, svc, leaks, k)
    assert a.status == 502 and "cannot reach" in a.body["error"]["message"]
    for line in ("status=503 .*upstream=429", "status=504 .*upstream=timeout", "status=502 .*upstream=unreachable"):
        await svc.wait_for(rf"device=kitchen {line}")


@pytest.mark.timeout(90)
async def test_100_concurrent_requests_from_10_devices(tmp_path, simulator, run_service, http, leaks) -> None:
    names = [f"room{i}" for i in range(10)]
    sec = new_secrets(leaks, names)
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec))  # default: 10 a minute
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(ask(http, svc, leaks, sec[n]) for n in names for _ in range(10)))
    wall = time.perf_counter() - t0
    assert [a.status for a in answers] == [200] * 100, sorted({a.status for a in answers})
    values = [a.body["value"] for a in answers]
    assert len(set(values)) == 100 and set(values) == set(simulator.minted)
    assert wall < 20, f"100 keys took {wall:.1f} s"
    # each device has used its 10 a minute; the 11th is refused, for every one of them
    extra = await asyncio.gather(*(ask(http, svc, leaks, sec[n]) for n in names))
    assert [a.status for a in extra] == [429] * 10
    for n in names:
        await svc.wait_for(rf"device={n} status=200", count=10)
        await svc.wait_for(rf"device={n} status=429")


@pytest.mark.timeout(90)
async def test_add_device_cli_then_reload(tmp_path, simulator, run_service, http, leaks) -> None:
    sec = new_secrets(leaks, ["kitchen"])
    config = write_config(tmp_path, simulator.api_base, sec)
    config.write_text(config.read_text() + "# keep this comment\n")
    config.chmod(0o640)
    before = config.read_text()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # stands in for systemd's NOTIFY_SOCKET
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    svc = await run_service(config, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert await asyncio.to_thread(notify.recv, 256) == b"READY=1"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.tokens", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        )

    r = cli("add-device", "living-room", "--config", str(config))
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    leaks.secrets.add(secret)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret), "stdout is the secret alone, for a script to capture"
    assert "shown only this once" in r.stderr
    after = config.read_text()
    assert after.startswith(before), "the file's other text stays as it was"
    assert hash_secret(secret) in after and secret not in after
    assert stat.S_IMODE(config.stat().st_mode) == 0o640

    # not known until the service re-reads its config
    assert (await ask(http, svc, leaks, secret)).status == 401
    n = len(svc.lines)
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGHUP)
    await svc.wait_for(r"reloaded .*: 2 devices", start=n)
    assert [await asyncio.to_thread(notify.recv, 256) for _ in range(2)] == [b"RELOADING=1", b"READY=1"]
    notify.close()
    assert (await ask(http, svc, leaks, secret)).status == 200
    await svc.wait_for(r"device=living-room status=200")
    assert (await ask(http, svc, leaks, sec["kitchen"])).status == 200

    # a second device with a secret file; the same name again is refused, the file left alone
    secret_file = tmp_path / "hall.secret"
    r = cli("add-device", "hall", "--config", str(config), "--secret-file", str(secret_file))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    leaks.secrets.add(secret_file.read_text().strip())
    snapshot = config.read_text()
    r = cli("add-device", "hall", "--config", str(config))
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = cli("add-device", "bad name!", "--config", str(config))
    assert r.returncode == 2 and "must be 1-64 letters" in r.stderr
    assert config.read_text() == snapshot
    # a broken config is not reloaded: the running one stays
    config.write_text(snapshot + "\n[session]\nkey_ttl_s = 5\n")
    n = len(svc.lines)
    svc.proc.send_signal(signal.SIGHUP)
    await svc.wait_for(r"reload failed, keeping the running config: .*tokens.toml", start=n)
    assert (await ask(http, svc, leaks, secret)).status == 200


@pytest.mark.timeout(60)
def test_config_errors_name_file_and_key(tmp_path) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text(API_KEY)
    base = f'[upstream]\napi_base = "http://127.0.0.1:9/v1"\napi_key_file = "{key_file}"\n'
    cases = {
        "ttl": (base + "[session]\nkey_ttl_s = 5\n", r"'session\.key_ttl_s' must be between 10 and 7200"),
        "ttl_type": (base + '[session]\nkey_ttl_s = "600"\n', r"'session\.key_ttl_s' must be an integer"),
        "keyfile": (base.replace(str(key_file), str(tmp_path / "nope.key")), r"'upstream\.api_key_file': secret file .*nope\.key does not exist"),
        "nokey": ('[upstream]\napi_base = "http://x/v1"\n', r"'upstream\.api_key_file' is not set and OPENAI_API_KEY is empty"),
        "hash": (base + '[[devices]]\nid = "k"\nsecret_hash = "hunter2"\n', r"'devices\[0\]\.secret_hash' must be 'sha256:'"),
        "dup": (base + f'[[devices]]\nid = "k"\nsecret_hash = "{hash_secret("a")}"\n[[devices]]\nid = "k"\nsecret_hash = "{hash_secret("b")}"\n', r"'devices\[1\]\.id' 'k' is used by another device"),
        "id": (base + f'[[devices]]\nid = "k k"\nsecret_hash = "{hash_secret("a")}"\n', r"'devices\[0\]\.id' must match"),
        "section": (base + "[sever]\nport = 1\n", r"unknown section \[sever\]"),
        "tls": (base + f'[server]\ntls_cert_file = "{tmp_path}/c.pem"\n', r"'server\.tls_key_file' is required"),
        "toml": (base + "[server\n", r"invalid TOML"),
        "base": (base.replace("http://127.0.0.1:9/v1", "ftp://x"), r"'upstream\.api_base' must be an http"),
    }
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    procs = {}
    for name, (text, _) in cases.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.tokens", "--config", str(path)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=45)
        pattern = cases[name][1]
        assert proc.returncode == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert str(tmp_path / f"{name}.toml") in lines[0], (name, err)
        assert re.search(pattern, lines[0]), (name, err)
        assert API_KEY not in err + out


@pytest.mark.timeout(60)
async def test_tls(tmp_path, simulator, run_service, leaks) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )
    sec = new_secrets(leaks, ["kitchen"])
    config = write_config(tmp_path, simulator.api_base, sec, extra_server=f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"')
    key.chmod(0o644)
    svc = await run_service(config)
    assert svc.url.startswith("https://")
    await svc.wait_for(r"WARNING speaker_tokens: server\.tls_key_file .*key\.pem is readable by other users \(mode 0644\)")
    assert not any("api_key_file" in l and "readable" in l for l in svc.lines), "the 0600 API key file is fine"
    ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        a = await ask(http, svc, leaks, sec["kitchen"])
    assert a.status == 200 and set(a.body) == {"value", "expires_at"}


@pytest.mark.timeout(90)
async def test_no_key_or_secret_in_any_log_line_or_response(tmp_path, simulator, run_service, http, leaks) -> None:
    """Every path at debug level; the whole output is checked for the API key, every device secret
    and every minted key (the check runs in run_service's teardown too, for every test)."""
    sec = new_secrets(leaks, ["kitchen", "bedroom"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec, rate=4, timeout_s=0.5, level="debug"))
    k = sec["kitchen"]
    seen = []
    seen.append(await ask(http, svc, leaks, k))
    seen.append(await ask(http, svc, leaks, "not-" + k))
    seen.append(await ask(http, svc, leaks, k, scheme="Token"))
    seen.append(await ask(http, svc, leaks, k, path=TOKEN_PATH + "?secret=" + k))
    for fail in (401, 500, "timeout", 429):
        simulator.fail_client_secrets = fail
        seen.append(await ask(http, svc, leaks, sec["bedroom"]))
    simulator.fail_client_secrets = None
    seen.append(await ask(http, svc, leaks, k))
    seen.append(await ask(http, svc, leaks, k))
    seen.append(await ask(http, svc, leaks, k))  # over the limit of 4
    seen.append(await ask(http, svc, leaks, k, method="GET"))
    seen.append(await ask(http, svc, leaks, k, path="/nope"))
    assert [a.status for a in seen] == [200, 401, 401, 200, 502, 502, 504, 503, 200, 200, 429, 405, 404]
    await svc.wait_for(r"speaker_tokens.access", count=len(seen))
    assert len(simulator.minted) == 4 and all(any(m in r for r in leaks.responses) for m in simulator.minted)

    # an upstream that quotes the key back, and one that answers 200 without a key
    hostile = QuotingUpstream()
    await hostile.start()
    try:
        (tmp_path / "hostile").mkdir()
        config = write_config(tmp_path / "hostile", hostile.api_base, sec, rate=100, level="debug")
        svc2 = await run_service(config)
        a = await ask(http, svc2, leaks, k)
        assert a.status == 502 and a.body["error"]["message"] == "the upstream rejected the API key (HTTP 401)"
        assert any(API_KEY in r for r in hostile.rejections), "the trap was set: the upstream did quote the key"
        hostile.mode = "garbage"
        a = await ask(http, svc2, leaks, k)
        assert a.status == 502 and "without a key" in a.body["error"]["message"]
        await svc2.wait_for(r"speaker_tokens.access", count=2)
    finally:
        await hostile.stop()
    leaks.check(simulator.minted)  # the complete capture of both services, at debug level


@pytest.mark.timeout(60)
async def test_speaker_in_token_service_mode_connects_with_the_key(tmp_path, simulator, run_service, leaks) -> None:
    """The whole chain: the device's TokenSource asks the service, the service mints upstream, the
    device opens a realtime session with the key; a device with a wrong secret is told why."""
    from device.config import load_settings
    from device.realtime.session import RealtimeSession
    from device.realtime.tokens import TokenError, TokenSource
    from tests.rig.simulator import write_device_config

    sec = new_secrets(leaks, ["kitchen"])
    svc = await run_service(write_config(tmp_path, simulator.api_base, sec))
    url = svc.url + TOKEN_PATH

    settings = load_settings(write_device_config(tmp_path / "kitchen", simulator, token_url=url, device_secret=sec["kitchen"]), env={})
    source = TokenSource(settings)
    try:
        key = await source.get()
        assert key.value.reveal() == simulator.minted[-1] and 500 < key.remaining() < 602  # (Date header: 1 s resolution)
        session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", key.value.reveal(), 5.0)
        await simulator.wait_for(lambda: simulator.sessions, 5, "session opened")
        await session.close()
        assert simulator.sessions[-1].key == key.value.reveal()
    finally:
        await source.close()

    stranger = new_secrets(leaks, ["stranger"])["stranger"]
    settings = load_settings(write_device_config(tmp_path / "stranger", simulator, token_url=url, device_secret=stranger), env={})
    source = TokenSource(settings)
    try:
        with pytest.raises(TokenError) as info:
            await source.probe()
        assert info.value.status == 401 and "rejected this device" in str(info.value)
    finally:
        await source.close()
    await svc.wait_for(r"device=- status=401")
