"""The ephemeral key source: direct mode against the simulator, service mode against a stub service."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from device.config import AuthConfig, RealtimeConfig, Secret, Settings, load_settings
from device.realtime.session import RealtimeSession
from device.realtime.tokens import TokenError, TokenSource
from services.simulator import RealtimeSimulator
from tests.rig.simulator import write_device_config

pytestmark = pytest.mark.timeout(30)


def direct(sim: RealtimeSimulator, *, api_key: str | None = None, ttl: int = 600, timeout_s: float = 5.0) -> Settings:
    auth = AuthConfig(api_base=sim.api_base, api_key=Secret(api_key or sim.api_key, "openai.key"), key_ttl_s=ttl, timeout_s=timeout_s)
    return Settings(path=Path("speaker.toml"), realtime=RealtimeConfig(url=sim.ws_url), auth=auth)


def service(url: str, secret: str, timeout_s: float = 5.0) -> Settings:
    auth = AuthConfig(token_url=url, device_secret_file="/etc/speaker/device.secret",
                      device_secret=Secret(secret, "/etc/speaker/device.secret"), timeout_s=timeout_s)
    return Settings(path=Path("speaker.toml"), auth=auth)


async def test_direct_mode_mints_with_the_api_key_and_the_key_opens_a_session(simulator: RealtimeSimulator) -> None:
    source = TokenSource(direct(simulator, ttl=300))
    try:
        key = await source.get()
        assert key.value.reveal() in simulator.minted
        assert simulator.secret_bodies == [{"expires_after": {"anchor": "created_at", "seconds": 300},
                                            "session": {"type": "realtime", "model": "gpt-realtime"}}]
        assert 295 < key.remaining() <= 301
        assert abs(key.expires_at - (time.time() + 300)) < 3
        assert "ek_" not in repr(key)  # the Secret hides it
        session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", key.value.reveal(), 5.0)
        await session.close()
        assert simulator.sessions[0].key == key.value.reveal()
    finally:
        await source.close()


async def test_a_key_is_kept_ready_so_a_wake_costs_no_http(simulator: RealtimeSimulator) -> None:
    source = TokenSource(direct(simulator))
    await source.start()
    try:
        await simulator.wait_for(lambda: source.ready, 5, "prefetched key")
        fetches = source.fetches
        start = time.perf_counter()
        first = await source.get()
        took = time.perf_counter() - start
        assert source.fetches == fetches, "get() must not do HTTP when a key is ready"
        assert took < 0.05
        # the key counts as used: a fresh one is prefetched, and get() never hands out a key twice
        await simulator.wait_for(lambda: source.ready, 5, "replacement key")
        second = await source.get()
        assert second.value != first.value
        assert len(simulator.minted) >= 2
    finally:
        await source.close()


async def test_a_ready_key_is_refreshed_before_it_expires(simulator: RealtimeSimulator) -> None:
    simulator.key_ttl_s = 3  # refresh due when a quarter of its life is left
    source = TokenSource(direct(simulator))
    await source.start()
    try:
        await simulator.wait_for(lambda: len(simulator.minted) >= 1, 5, "first key")
        start = time.monotonic()
        await simulator.wait_for(lambda: len(simulator.minted) >= 2, 5, "refreshed key")
        assert time.monotonic() - start < 2.9, "refreshed only after the key expired"
        # minted on the server; wait for the answer to reach the source before taking the key
        await simulator.wait_for(lambda: source.ready and source._ready.value.reveal() == simulator.minted[-1],
                                 2, "refreshed key ready")
        key = await source.get()
        assert key.value.reveal() == simulator.minted[-1] and key.remaining() > 0.5
    finally:
        await source.close()


async def test_get_fetches_on_demand_without_start(simulator: RealtimeSimulator) -> None:
    source = TokenSource(direct(simulator))
    try:
        keys = await asyncio.gather(source.get(), source.get())
        assert keys[0].value != keys[1].value
    finally:
        await source.close()


async def test_a_refused_api_key_is_reported_clearly_without_the_secret(simulator: RealtimeSimulator, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-secret-value-123456"
    source = TokenSource(direct(simulator, api_key=wrong))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(TokenError) as info:
            await source.get()
    finally:
        await source.close()
    assert info.value.status == 401
    assert "rejected the API key" in str(info.value) and "openai.key" in str(info.value)
    assert wrong not in str(info.value) and wrong not in caplog.text
    assert any(r.levelno == logging.ERROR and "rejected" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors_become_token_errors(simulator: RealtimeSimulator, status: int) -> None:
    simulator.fail_client_secrets = status
    source = TokenSource(direct(simulator))
    try:
        with pytest.raises(TokenError, match=f"HTTP {status}") as info:
            await source.get()
        assert info.value.status == status
    finally:
        await source.close()


async def test_a_hanging_endpoint_times_out_within_the_configured_time(simulator: RealtimeSimulator) -> None:
    simulator.fail_client_secrets = "timeout"
    source = TokenSource(direct(simulator, timeout_s=0.5))
    try:
        start = time.monotonic()
        with pytest.raises(TokenError, match="did not answer within 0.5 s"):
            await source.get()
        assert time.monotonic() - start < 1.5
    finally:
        await source.close()


async def test_429_is_honoured_without_further_requests(simulator: RealtimeSimulator) -> None:
    simulator.fail_client_secrets = 429
    simulator.retry_after_s = 1.5
    source = TokenSource(direct(simulator))
    await source.start()
    try:
        await simulator.wait_for(lambda: simulator.secret_requests >= 1, 5, "first request")
        with pytest.raises(TokenError) as info:
            await source.get()
        assert info.value.status == 429 and 0 < (info.value.retry_after or 0) <= 1.5
        assert simulator.secret_requests == 1, "asked again inside the Retry-After window"
        simulator.fail_client_secrets = None
        start = time.monotonic()
        await simulator.wait_for(lambda: source.ready, 5, "key after Retry-After")
        assert simulator.secret_requests == 2
        assert time.monotonic() - start > 1.0
    finally:
        await source.close()


@pytest.fixture
async def token_service() -> AsyncIterator[dict]:
    """A stand-in for our token service: POST /v1/realtime/token with the device secret."""
    state: dict = {"secret": "dev-secret-abcdef", "status": 200, "requests": [], "n": 0}

    async def token(request: web.Request) -> web.Response:
        state["requests"].append(dict(request.headers))
        if request.headers.get("Authorization") != f"Bearer {state['secret']}":
            return web.json_response({"error": "unknown device"}, status=401)
        if state["status"] != 200:
            return web.json_response({"error": "upstream failed"}, status=state["status"])
        state["n"] += 1
        return web.json_response({"value": f"ek_service_{state['n']}", "expires_at": int(time.time()) + 600})

    app = web.Application()
    app.router.add_post("/v1/realtime/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/realtime/token"  # type: ignore[union-attr]
    yield state
    await runner.cleanup()


async def test_service_mode_sends_the_device_secret(token_service: dict) -> None:
    source = TokenSource(service(token_service["url"], token_service["secret"]))
    try:
        key = await source.get()
        assert key.value.reveal() == "ek_service_1" and 590 < key.remaining() <= 601
        assert token_service["requests"][0]["Authorization"] == "Bearer dev-secret-abcdef"
        assert "OpenAI-Beta" not in token_service["requests"][0]
        assert "key obtained" in await source.probe()
    finally:
        await source.close()


async def test_service_refusing_the_device_says_so_without_the_secret(token_service: dict, caplog: pytest.LogCaptureFixture) -> None:
    source = TokenSource(service(token_service["url"], "not-the-secret-xyz"))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(TokenError) as info:
            await source.get()
    finally:
        await source.close()
    msg = str(info.value)
    assert info.value.status == 401 and "rejected this device" in msg and "device_secret_file" in msg
    assert "not-the-secret-xyz" not in msg and "not-the-secret-xyz" not in caplog.text


async def test_service_upstream_failure_is_reported(token_service: dict) -> None:
    token_service["status"] = 502
    source = TokenSource(service(token_service["url"], token_service["secret"]))
    try:
        with pytest.raises(TokenError, match="HTTP 502"):
            await source.get()
    finally:
        await source.close()


async def test_an_unreachable_service_is_named() -> None:
    source = TokenSource(service("http://127.0.0.1:9/v1/realtime/token", "s"))
    try:
        with pytest.raises(TokenError, match="cannot reach http://127.0.0.1:9/"):
            await source.get()
    finally:
        await source.close()


async def test_no_auth_configured_is_a_clear_error() -> None:
    source = TokenSource(Settings(path=Path("speaker.toml")))
    await source.start()
    with pytest.raises(TokenError, match="auth.token_url"):
        await source.get()
    await source.close()


async def test_a_config_written_by_the_rig_gets_keys_from_the_simulator(simulator: RealtimeSimulator, tmp_path: Path) -> None:
    path = write_device_config(tmp_path, simulator, sections={"realtime": {"voice": "cedar"}, "mqtt": {"enabled": False}})
    settings = load_settings(path, env={})
    assert settings.auth.mode == "direct" and settings.realtime.url == simulator.ws_url and settings.realtime.voice == "cedar"
    assert simulator.api_key not in repr(settings)
    source = TokenSource(settings)
    try:
        key = await source.get()
        session = await RealtimeSession.connect(settings.realtime.url, settings.realtime.model, key.value.reveal(), 5.0)
        await session.close()
    finally:
        await source.close()
    assert simulator.sessions[0].key == key.value.reveal()
