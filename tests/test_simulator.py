"""The realtime simulator behaves like the GA server where a speaker depends on it.

Every test here also gets the fixture's teardown checks: each event the simulator sent conforms to
the SDK's server event models, and each client event conforms (unless the test sends bad ones on
purpose and says so).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from device.config import RealtimeConfig
from device.realtime import protocol as P
from device.realtime.session import RealtimeSession, SessionClosed
from services.simulator import RealtimeSimulator, Turn, speech_pcm

pytestmark = pytest.mark.timeout(40)

ROOT = Path(__file__).resolve().parents[1]
UTTERANCE = "what is the weather like in the garden today"


def silence(ms: int) -> bytes:
    return bytes(ms * P.BYTES_PER_MS)


def loud_span_ms(pcm: bytes, level: float = 800.0) -> tuple[int, int]:
    """First and last 10 ms block of ``pcm`` louder than ``level`` (RMS): where the words are."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    blocks = x[: len(x) // 240 * 240].reshape(-1, 240)
    loud = np.flatnonzero(np.sqrt((blocks**2).mean(axis=1)) > level)
    return int(loud[0]) * 10, int(loud[-1]) * 10 + 10


class Client:
    """A device-side session that records everything it receives."""

    def __init__(self, session: RealtimeSession) -> None:
        self.s = session
        self.events: list[dict[str, Any]] = []
        self.audio = b""

    @classmethod
    async def open(cls, sim: RealtimeSimulator, rt: RealtimeConfig | None = None) -> Client:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sim.api_base}/realtime/client_secrets", headers={"Authorization": f"Bearer {sim.api_key}"},
                                 json={"session": {"type": "realtime", "model": "gpt-realtime"}}) as resp:
                key = (await resp.json())["value"]
        client = cls(await RealtimeSession.connect(sim.ws_url, "gpt-realtime", key, 5.0))
        await client.until("session.created")
        if rt is not None:
            await client.s.send(P.session_update(rt, instructions="Be brief.", tools=[]))
            await client.until("session.updated")
        return client

    async def until(self, kind: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.s.recv()
                self.events.append(event)
                if event["type"] == "response.output_audio.delta":
                    self.audio += P.decode_audio_delta(event)
                if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return event

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def stream(self, pcm: bytes, chunk_ms: int = 80) -> None:
        step = chunk_ms * P.BYTES_PER_MS
        for i in range(0, len(pcm), step):
            await self.s.send(P.audio_append(pcm[i:i + step]))

    async def close(self) -> None:
        await self.s.close()


@pytest.mark.simulator(pace=0, script=[Turn(say="It is sunny.", transcript=UTTERANCE)])
async def test_vad_finds_the_speech_commits_it_transcribes_and_answers(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator, RealtimeConfig())
    speech = speech_pcm(UTTERANCE)
    first, last = loud_span_ms(speech)
    await client.stream(silence(600) + speech + silence(1200))
    started = await client.until("input_audio_buffer.speech_started")
    stopped = await client.until("input_audio_buffer.speech_stopped")
    committed = await client.until("input_audio_buffer.committed")
    transcript = await client.until("conversation.item.input_audio_transcription.completed")
    done = await client.until("response.done")
    await client.close()
    # the start includes the prefix padding (300 ms), the end the configured silence (500 ms),
    # as the real server's do
    assert abs(started["audio_start_ms"] - (600 + first - 300)) <= 100
    assert abs(stopped["audio_end_ms"] - (600 + last + 500)) <= 100
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] == transcript["item_id"]
    assert transcript["transcript"] == UTTERANCE
    assert done["response"]["status"] == "completed"
    assert done["response"]["usage"]["output_token_details"]["audio_tokens"] > 0
    assert len(simulator.sessions[0].audio_in) == len(silence(600) + speech + silence(1200))


@pytest.mark.simulator(pace=0)
async def test_quiet_noise_is_not_speech(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator, RealtimeConfig())
    noise = (np.random.default_rng(1).normal(0, 100, 24_000 * 2)).astype("<i2").tobytes()  # about -50 dBFS
    await client.stream(noise)
    await client.s.send(P.audio_clear())
    await client.until("input_audio_buffer.cleared")
    await client.close()
    assert not client.of("input_audio_buffer.speech_started")
    assert simulator.sessions[0].speech == []


@pytest.mark.simulator(pace=1.0)
async def test_reply_is_spoken_text_paced_in_real_time(simulator: RealtimeSimulator) -> None:
    text = "The kitchen light is now on."
    simulator.add(text)
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    await client.until("response.output_audio.delta")
    start = time.monotonic()
    done = await client.until("response.done")
    took = time.monotonic() - start
    await client.close()
    expected = speech_pcm(text)
    assert client.audio == expected
    ms = P.pcm_ms(len(expected))
    assert ms > 1000
    # real time: the audio arrives over its own duration, not in one burst
    assert ms / 1000 * 0.8 <= took + 0.05 <= ms / 1000 * 1.6, (ms, took)
    words = "".join(e["delta"] for e in client.of("response.output_audio_transcript.delta"))
    assert words == text
    assert client.of("response.output_audio_transcript.done")[0]["transcript"] == text
    assert done["response"]["output"][0]["content"][0]["transcript"] == text
    # the reply is speech: its loudness varies like syllables, not a constant tone
    x = np.frombuffer(expected, dtype="<i2").astype(np.float32)
    frames = x[: len(x) // 480 * 480].reshape(-1, 480)
    rms = np.sqrt((frames**2).mean(axis=1))
    assert rms.max() > 1000 and (rms < 100).sum() > 3


@pytest.mark.simulator(pace=0, script=[Turn(call="set_volume", arguments={"volume": 30}, then="Volume is now thirty.")])
async def test_function_call_round_trip(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    call = P.parse_function_call(await client.until("response.function_call_arguments.done"))
    first = await client.until("response.done")
    assert (call.name, json.loads(call.arguments)) == ("set_volume", {"volume": 30})
    assert first["response"]["output"][0]["type"] == "function_call"
    deltas = "".join(e["delta"] for e in client.of("response.function_call_arguments.delta"))
    assert deltas == call.arguments
    await client.s.send(P.function_call_output(call.call_id, json.dumps({"ok": True, "volume": 30})))
    await client.until("conversation.item.done")
    await client.s.send(P.response_create())
    transcript = await client.until("response.output_audio_transcript.done")
    await client.until("response.done")
    await client.close()
    assert transcript["transcript"] == "Volume is now thirty."
    assert simulator.sessions[0].function_outputs[0]["output"] == '{"ok": true, "volume": 30}'


@pytest.mark.simulator(pace=0)
async def test_function_output_for_an_unknown_call_is_an_error(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.function_call_output("call_nope", "{}"))
    err = P.parse_error(await client.until("error"))
    await client.close()
    assert "call_nope" in err.message


@pytest.mark.simulator(pace=0, script=["One two three four five."])
async def test_truncate_past_the_audio_sent_is_rejected_within_is_accepted(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    done = await client.until("response.done")
    item_id = done["response"]["output"][0]["id"]
    sent_ms = P.pcm_ms(len(client.audio))
    await client.s.send(P.item_truncate(item_id, 0, sent_ms + 500))
    err = P.parse_error(await client.until("error"))
    assert err.param == "audio_end_ms" and "shorter" in err.message
    await client.s.send(P.item_truncate(item_id, 0, sent_ms // 2))
    truncated = await client.until("conversation.item.truncated")
    await client.close()
    assert truncated["audio_end_ms"] == sent_ms // 2 and truncated["item_id"] == item_id
    assert simulator.sessions[0].truncations == [(item_id, sent_ms // 2)]


@pytest.mark.simulator(pace=1.0, script=["This is a long answer that the listener will not want to hear until the end."])
async def test_response_cancel_stops_the_reply(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    await client.until("response.output_audio.delta")
    await asyncio.sleep(0.3)
    await client.s.send(P.response_cancel())
    done = await client.until("response.done")
    await client.close()
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert P.pcm_ms(len(client.audio)) < 1500 < P.pcm_ms(len(speech_pcm(simulator.sessions[0].responses[0].text)))


@pytest.mark.parametrize("barge_in", ["voice", "wake_word"])
@pytest.mark.simulator(pace=2.0)
async def test_speech_during_a_reply_interrupts_only_when_configured(simulator: RealtimeSimulator, barge_in: str) -> None:
    simulator.add("Here is a rather long answer, so that there is time to interrupt it in the middle.")
    client = await Client.open(simulator, dataclasses.replace(RealtimeConfig(), barge_in=barge_in))
    await client.s.send(P.response_create())
    await client.until("response.output_audio.delta")
    await client.stream(speech_pcm("stop") + silence(100))
    done = await client.until("response.done")
    await client.close()
    assert client.of("input_audio_buffer.speech_started")
    if barge_in == "voice":
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
    else:
        assert done["response"]["status"] == "completed"


@pytest.mark.simulator(pace=0, script=["Hi.", "Are you still there?"])
async def test_idle_timeout_prompts_after_the_reply_has_been_played(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator, dataclasses.replace(RealtimeConfig(), idle_timeout_ms=5000))
    simulator.runner.call(_shorten_idle(simulator))  # 5 s is the smallest the API takes; wait 0.3 s here
    await client.s.send(P.response_create())
    await client.until("response.done")
    played_by = time.monotonic() + P.pcm_ms(len(client.audio)) / 1000
    await client.stream(silence(400))
    timeout = await client.until("input_audio_buffer.timeout_triggered")
    fired = time.monotonic()
    second = await client.until("response.output_audio_transcript.done")
    await client.close()
    assert fired >= played_by + 0.2, "fired before the reply could have been played"
    assert timeout["audio_end_ms"] >= timeout["audio_start_ms"]
    assert second["transcript"] == "Are you still there?"


async def _shorten_idle(sim: RealtimeSimulator) -> None:
    sim.sessions[0].config["audio"]["input"]["turn_detection"]["idle_timeout_ms"] = 300


@pytest.mark.simulator(pace=0, allow_violations=True)
async def test_a_session_update_with_an_unknown_key_is_rejected_whole(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    update = P.session_update(dataclasses.replace(RealtimeConfig(), voice="cedar"), instructions="x", tools=[])
    update["session"]["audio"]["input"]["turn_detection"]["temperature"] = 0.7
    await client.s.send(update)
    err = P.parse_error(await client.until("error"))
    assert err.code == "unknown_parameter"
    assert err.param == "session.update.session.audio.input.turn_detection.temperature" or err.param.endswith("turn_detection.temperature")
    assert client.s.sent_type(err.event_id) == "session.update"
    assert simulator.sessions[0].config["audio"]["output"]["voice"] == "marin"  # nothing applied
    assert simulator.violations and "temperature" in simulator.violations[0]
    # a conformant update afterwards works
    await client.s.send(P.session_update(dataclasses.replace(RealtimeConfig(), voice="cedar"), instructions="x", tools=[]))
    updated = await client.until("session.updated")
    await client.close()
    assert updated["session"]["audio"]["output"]["voice"] == "cedar"


@pytest.mark.simulator(pace=0, allow_violations=True)
async def test_beta_shaped_events_are_flagged(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send({"type": "session.update", "session": {"type": "realtime", "voice": "alloy", "input_audio_format": "pcm16"}})
    await client.s.send({"type": "response.create", "response": {"modalities": ["audio", "text"]}})
    await client.until("error")
    await client.until("error")
    await client.close()
    text = " ".join(simulator.violations)
    assert "session.voice" in text and "input_audio_format" in text and "response.modalities" in text
    assert not client.of("response.created")


@pytest.mark.simulator(pace=0, script=["Manual answer."])
async def test_manual_turns_without_server_vad(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}})
    await client.until("session.updated")
    await client.stream(silence(50))
    await client.s.send(P.audio_commit())
    err = P.parse_error(await client.until("error"))
    assert err.code == "input_audio_buffer_commit_empty"
    await client.stream(speech_pcm("hello"))
    await client.s.send(P.audio_commit())
    await client.until("input_audio_buffer.committed")
    await asyncio.sleep(0.3)
    assert not client.of("input_audio_buffer.speech_started") and not client.of("response.created")
    await client.s.send(P.response_create())
    transcript = await client.until("response.output_audio_transcript.done")
    await client.close()
    assert transcript["transcript"] == "Manual answer."


@pytest.mark.simulator(pace=0, script=[Turn(fail="error")])
async def test_scripted_server_error(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    err = P.parse_error(await client.until("error"))
    done = await client.until("response.done")
    await client.close()
    assert err.type == "server_error" and done["response"]["status"] == "failed"


@pytest.mark.simulator(pace=0, script=[Turn(fail="silent")])
async def test_scripted_silence(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    with pytest.raises(TimeoutError):
        await client.until("response.created", timeout=1.0)
    await client.close()
    assert simulator.sessions[0].silent


@pytest.mark.simulator(max_session_s=0.5)
async def test_sessions_end_at_the_duration_limit(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    err = P.parse_error(await client.until("error", timeout=5))
    assert err.code == "session_expired"
    with pytest.raises(SessionClosed) as info:
        await client.until("never", timeout=5)
    assert info.value.code == 1000


async def test_handshake_refuses_beta_header_and_expired_keys(simulator: RealtimeSimulator) -> None:
    simulator.key_ttl_s = -5
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{simulator.api_base}/realtime/client_secrets", headers={"Authorization": f"Bearer {simulator.api_key}"}, json={}) as resp:
            expired = (await resp.json())["value"]
    simulator.key_ttl_s = None
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{simulator.api_base}/realtime/client_secrets", headers={"Authorization": f"Bearer {simulator.api_key}"}, json={}) as resp:
            good = (await resp.json())["value"]
    url = simulator.ws_url + "?model=gpt-realtime"
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": f"Bearer {good}", "OpenAI-Beta": "realtime=v1"})
    assert info.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as info:
        await connect(url, additional_headers={"Authorization": f"Bearer {expired}"})
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        await connect(simulator.ws_url, additional_headers={"Authorization": f"Bearer {good}"})
    assert info.value.response.status_code == 400  # no ?model=
    assert any("OpenAI-Beta" in r for r in simulator.rejected) and any("expired" in r for r in simulator.rejected)


async def test_client_secrets_validates_like_the_api(simulator: RealtimeSimulator) -> None:
    url = f"{simulator.api_base}/realtime/client_secrets"
    good = {"Authorization": f"Bearer {simulator.api_key}"}
    async with aiohttp.ClientSession() as http:
        async def post(body: Any, headers: dict[str, str] = good) -> tuple[int, dict]:
            async with http.post(url, headers=headers, json=body) as resp:
                return resp.status, await resp.json()

        assert (await post({}, {"Authorization": "Bearer sk-other"}))[0] == 401
        assert (await post({"expires_after": {"anchor": "created_at", "seconds": 5}}))[0] == 400
        status, body = await post({"session": {"type": "realtime", "voice": "marin"}})
        assert status == 400 and "session.voice" in body["error"]["message"]
        assert (await post({"expires_in": 60}))[0] == 400
        status, body = await post({"expires_after": {"anchor": "created_at", "seconds": 120}, "session": {"type": "realtime", "model": "gpt-realtime"}})
    assert status == 200 and body["value"].startswith("ek_") and 110 < body["expires_at"] - time.time() <= 121
    assert body["session"]["type"] == "realtime" and body["value"] in simulator.minted
    simulator.violations.clear()  # the bad session above was deliberate


def test_cli_serves_keys_and_the_websocket(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.simulator", "--port", "0", "--api-key", "sk-demo", "--reply", "Hello from the simulator."],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "api_base=" in line, line
        api_base = line.split("api_base=")[1].split()[0]
        ws_url = line.split("ws_url=")[1].split()[0]

        async def talk() -> str:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{api_base}/realtime/client_secrets", headers={"Authorization": "Bearer sk-demo"}, json={}) as resp:
                    key = (await resp.json())["value"]
            session = await RealtimeSession.connect(ws_url, "gpt-realtime", key, 5.0)
            await session.send(P.response_create())
            async with asyncio.timeout(15):
                while (event := await session.recv())["type"] != "response.output_audio_transcript.done":
                    pass
            await session.close()
            return event["transcript"]

        assert asyncio.run(talk()) == "Hello from the simulator."
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.simulator(pace=1.0, script=["A reply long enough to go silent in the middle of it, for the test."])
async def test_a_server_told_to_go_silent_stops_mid_reply(simulator: RealtimeSimulator) -> None:
    client = await Client.open(simulator)
    await client.s.send(P.response_create())
    await client.until("response.output_audio.delta")
    simulator.sessions[0].go_silent()
    with pytest.raises(TimeoutError):
        await client.until("response.done", timeout=1.5)
    await client.close()
    assert P.pcm_ms(len(client.audio)) < 1000
