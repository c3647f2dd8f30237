"""The realtime websocket transport against the simulator and against broken servers."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from device.realtime import protocol as P
from device.realtime.session import ConnectError, RealtimeSession, SessionClosed, session_url
from services.simulator import RealtimeSimulator, Turn

pytestmark = pytest.mark.timeout(30)


async def mint(sim: RealtimeSimulator) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.api_base}/realtime/client_secrets", headers={"Authorization": f"Bearer {sim.api_key}"},
                             json={"session": {"type": "realtime", "model": "gpt-realtime"}}) as resp:
            assert resp.status == 200
            return (await resp.json())["value"]


async def recv_until(session: RealtimeSession, kind: str, timeout: float = 10.0) -> list[dict]:
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            event = await session.recv()
            seen.append(event)
            if event["type"] == kind:
                return seen


def test_session_url_adds_the_model() -> None:
    assert session_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert session_url("ws://h:1/v1/realtime?x=1", "a b") == "ws://h:1/v1/realtime?x=1&model=a+b"


async def test_connect_uses_the_ephemeral_key_and_no_beta_header(simulator: RealtimeSimulator) -> None:
    key = await mint(simulator)
    session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", key, 5.0)
    try:
        first = await session.recv()
        assert first["type"] == "session.created"
        sim_session = simulator.sessions[0]
        assert sim_session.key == key and sim_session.model == "gpt-realtime"
        assert sim_session.headers["Authorization"] == f"Bearer {key}"
        assert not any(h.lower() == "openai-beta" for h in sim_session.headers)
        await session.send(P.audio_append(b"\x00\x00" * 2400))
        await simulator.wait_for(lambda: len(sim_session.audio_in) == 4800, 5, "audio at the server")
    finally:
        await session.close()
    assert session.closed
    await simulator.wait_for(lambda: simulator.sessions[0].closed, 5, "server sees the close")
    assert simulator.sessions[0].close_code == 1000


async def test_sent_events_get_ids_that_name_the_culprit_of_an_error(simulator: RealtimeSimulator) -> None:
    session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", await mint(simulator), 5.0)
    try:
        await session.recv()
        await session.send(P.response_cancel())  # nothing to cancel: the server answers with an error
        events = await recv_until(session, "error")
        err = P.parse_error(events[-1])
        assert err.code == "response_cancel_not_active"
        assert session.sent_type(err.event_id) == "response.cancel"
    finally:
        await session.close()


async def test_the_api_key_itself_is_refused_and_never_shown(simulator: RealtimeSimulator) -> None:
    with pytest.raises(ConnectError) as info:
        await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", simulator.api_key, 5.0)
    assert info.value.status == 403
    assert simulator.api_key not in str(info.value)
    assert "403" in str(info.value)
    assert not simulator.sessions


async def test_an_unknown_key_is_refused_with_401(simulator: RealtimeSimulator) -> None:
    with pytest.raises(ConnectError) as info:
        await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", "ek_forged", 5.0)
    assert info.value.status == 401 and "ek_forged" not in str(info.value)


async def test_connect_to_a_closed_port_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConnectError, match="cannot reach"):
        await RealtimeSession.connect(f"ws://127.0.0.1:{port}/v1/realtime", "m", "ek_x", 5.0)
    assert time.monotonic() - start < 2.0


async def test_connect_times_out_when_the_server_never_answers_the_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        with pytest.raises(ConnectError, match="within 0.5 s"):
            await RealtimeSession.connect(f"ws://127.0.0.1:{port}/v1/realtime", "m", "ek_x", 0.5)
        assert 0.4 < time.monotonic() - start < 2.0
    finally:
        server.close()


@pytest.mark.simulator(pace=2.0, script=[Turn(say="This reply will be cut off by a dropped connection, sadly.", fail="drop", drop_after_ms=400)])
async def test_a_dropped_connection_mid_reply_raises_session_closed(simulator: RealtimeSimulator) -> None:
    session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", await mint(simulator), 5.0)
    await session.recv()
    await session.send(P.response_create())
    audio = b""
    with pytest.raises(SessionClosed) as info:
        async with asyncio.timeout(10):
            while True:
                event = await session.recv()
                audio += P.decode_audio_delta(event) if event["type"] == "response.output_audio.delta" else b""
    assert info.value.code is None  # no close frame: a drop, not a close
    assert 300 <= P.pcm_ms(len(audio)) <= 600
    assert session.closed
    with pytest.raises(SessionClosed):
        await session.send(P.response_cancel())
    await session.close()  # harmless after a drop


async def test_a_server_close_is_reported_with_its_code(simulator: RealtimeSimulator) -> None:
    session = await RealtimeSession.connect(simulator.ws_url, "gpt-realtime", await mint(simulator), 5.0)
    await session.recv()
    simulator.runner.call(simulator.sessions[0].ws.close(code=1011, message=b"internal error"))
    with pytest.raises(SessionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await session.recv()
    assert info.value.code == 1011 and "internal error" in str(info.value)
