"""Protocol builders and parsers, checked against the openai SDK's GA models (undeclared keys flagged)."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import datetime

import pytest

from device.config import RealtimeConfig
from device.realtime import protocol as P
from services import conformance

pytestmark = pytest.mark.skipif(not conformance.available(), reason="needs the openai SDK")

TOOLS = [
    {"type": "function", "name": "set_volume", "description": "Set the volume",
     "parameters": {"type": "object", "properties": {"volume": {"type": "integer"}}, "required": ["volume"]}},
]


def cfg(**changes: object) -> RealtimeConfig:
    return dataclasses.replace(RealtimeConfig(), **changes)


CONFIGS = {
    "default": cfg(),
    "voice_barge_in": cfg(barge_in="voice"),
    "semantic": cfg(turn_detection="semantic_vad", eagerness="high"),
    "no_transcription": cfg(transcription_model=""),
    "no_noise_reduction": cfg(noise_reduction="off"),
    "near_field": cfg(noise_reduction="near_field"),
    "idle_and_cap": cfg(idle_timeout_ms=8000, max_output_tokens=300, speed=1.2, voice="cedar"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_session_update_conforms_for_every_config_variant(name: str) -> None:
    event = P.session_update(CONFIGS[name], instructions="Be brief.", tools=TOOLS)
    assert conformance.check_client_event(event) == []


def test_session_update_carries_the_config() -> None:
    rt = cfg(voice="cedar", speed=1.1, vad_threshold=0.7, prefix_padding_ms=250, silence_duration_ms=600,
             idle_timeout_ms=6000, max_output_tokens=500, language="de")
    s = P.session_update(rt, instructions="Hallo", tools=TOOLS)["session"]
    assert s["type"] == "realtime" and s["model"] == "gpt-realtime"
    assert s["instructions"] == "Hallo"
    assert s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "cedar", "speed": 1.1}
    assert s["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe", "language": "de"}
    assert s["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 250, "silence_duration_ms": 600,
        "idle_timeout_ms": 6000, "create_response": True, "interrupt_response": False,
    }
    assert s["tools"] == TOOLS and s["tool_choice"] == "auto"
    assert s["max_output_tokens"] == 500


def test_optional_parts_are_left_out_not_nulled() -> None:
    s = P.session_update(cfg(transcription_model="", noise_reduction="off"), instructions="", tools=[])["session"]
    assert "transcription" not in s["audio"]["input"]
    assert "noise_reduction" not in s["audio"]["input"]
    assert "idle_timeout_ms" not in s["audio"]["input"]["turn_detection"]
    assert "max_output_tokens" not in s


def test_barge_in_mode_decides_whether_the_server_interrupts() -> None:
    wake = P.session_update(cfg(barge_in="wake_word"), instructions="", tools=[])["session"]
    voice = P.session_update(cfg(barge_in="voice"), instructions="", tools=[])["session"]
    assert wake["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    assert voice["audio"]["input"]["turn_detection"]["interrupt_response"] is True


def test_semantic_vad_has_only_its_own_parameters() -> None:
    td = P.session_update(cfg(turn_detection="semantic_vad", eagerness="low"), instructions="", tools=[])["session"]["audio"]["input"]["turn_detection"]
    assert td == {"type": "semantic_vad", "eagerness": "low", "create_response": True, "interrupt_response": False}


@pytest.mark.parametrize(
    "session, path",
    [
        # beta-protocol keys: the GA server rejects them
        ({"type": "realtime", "voice": "marin"}, "session.voice"),
        ({"type": "realtime", "input_audio_format": "pcm16"}, "session.input_audio_format"),
        ({"type": "realtime", "modalities": ["audio", "text"]}, "session.modalities"),
        ({"type": "realtime", "temperature": 0.8}, "session.temperature"),
        # nested ones
        ({"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}},
         "session.audio.input.turn_detection.eagerness"),
        ({"type": "realtime", "audio": {"output": {"voice": "marin", "volume": 3}}}, "session.audio.output.volume"),
        ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000, "channels": 1}}}},
         "session.audio.input.format.channels"),
    ],
)
def test_conformance_flags_undeclared_keys_at_any_depth(session: dict, path: str) -> None:
    problems = conformance.check_client_event({"type": "session.update", "session": session})
    assert any(p.split(":")[0].endswith(path) for p in problems), problems


def test_conformance_flags_wrong_values_and_types() -> None:
    bad_rate = {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}
    assert conformance.check_client_event(bad_rate)
    assert conformance.check_client_event({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "5"})
    assert conformance.check_client_event({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": -1})
    assert conformance.check_client_event({"type": "input_audio_buffer.append"})  # no audio
    assert conformance.check_client_event({"type": "response.create", "response": {"modalities": ["audio"]}})
    assert conformance.check_client_event({"type": "no.such.event"})
    speed = P.session_update(cfg(), instructions="", tools=[])
    speed["session"]["audio"]["output"]["speed"] = 3.0
    assert conformance.check_client_event(speed)


def test_conformance_checks_server_events_too() -> None:
    ok = {"type": "input_audio_buffer.speech_started", "event_id": "e1", "audio_start_ms": 10, "item_id": "i1"}
    assert conformance.check_server_event(ok) == []
    assert conformance.check_server_event({**ok, "extra": 1})
    assert conformance.check_server_event({"type": "input_audio_buffer.speech_started", "event_id": "e1"})


def test_small_builders_conform_and_carry_their_data() -> None:
    pcm = bytes(range(256)) * 10
    events = [
        P.audio_append(pcm), P.audio_commit(), P.audio_clear(), P.response_create(), P.response_cancel(),
        P.response_create("Say 'hello'"), P.item_truncate("item_1", 0, 1234),
        P.function_call_output("call_1", json.dumps({"ok": True})), P.user_text("turn on the light"),
        P.tools_update(TOOLS),
    ]
    for event in events:
        assert conformance.check_client_event(event) == [], event["type"]
    assert base64.b64decode(events[0]["audio"]) == pcm
    assert events[6] == {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0, "audio_end_ms": 1234}
    assert events[7]["item"] == {"type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}
    assert events[8]["item"]["content"] == [{"type": "input_text", "text": "turn on the light"}]
    assert events[5]["response"] == {"instructions": "Say 'hello'"}


def test_truncate_never_sends_a_negative_or_fractional_position() -> None:
    assert P.item_truncate("i", 0, -20)["audio_end_ms"] == 0
    assert P.item_truncate("i", 0, 99.7)["audio_end_ms"] == 99  # type: ignore[arg-type]


def test_render_instructions_fills_every_placeholder() -> None:
    now = datetime(2026, 11, 22, 7, 5)
    text = P.render_instructions(
        "Today is {{today}}, {{ time }}. Speak {{language}}. You are {{device}}. Devices: {{devices}}. {{unknown}}",
        device="kitchen", language="de", devices="kitchen light (light, kitchen)", now=now,
    )
    assert text == ("Today is Sunday, 22 November 2026, 07:05. Speak German. You are kitchen. "
                    "Devices: kitchen light (light, kitchen). {{unknown}}")
    assert "(no devices known)" in P.render_instructions("{{devices}}", device="d", language="en", devices=" ", now=now)


def test_decode_audio_delta_and_parsers() -> None:
    pcm = b"\x01\x02" * 480
    delta = {"type": "response.output_audio.delta", "delta": base64.b64encode(pcm).decode()}
    assert P.decode_audio_delta(delta) == pcm
    assert P.decode_audio_delta({"type": "response.output_audio.delta"}) == b""
    assert P.pcm_ms(len(pcm)) == 20
    fc = P.parse_function_call({"type": "response.function_call_arguments.done", "call_id": "c", "name": "set_volume",
                                "arguments": '{"volume": 3}', "item_id": "i", "response_id": "r"})
    assert (fc.call_id, fc.name, json.loads(fc.arguments)) == ("c", "set_volume", {"volume": 3})
    err = P.parse_error({"type": "error", "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                                                    "message": "Unknown parameter: 'session.foo'.", "param": "session.foo", "event_id": "dev_3"}})
    assert err.code == "unknown_parameter" and err.event_id == "dev_3" and "session.foo" in str(err)
    done = P.parse_response_done({"type": "response.done", "response": {
        "id": "r1", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "client_cancelled"},
        "usage": {"total_tokens": 30, "input_tokens": 10, "output_tokens": 20, "output_token_details": {"audio_tokens": 15}}}})
    assert (done.status, done.reason, done.total_tokens, done.audio_out_tokens) == ("cancelled", "client_cancelled", 30, 15)
    assert "client_cancelled" in str(done)


def test_per_response_overrides_and_item_builders_conform() -> None:
    events = [
        P.response_create_with("Say it.", tool_choice="none", conversation="none"),
        P.response_create_with(),
        P.item_retrieve("item_1"),
        P.item_delete("item_1"),
        P.user_text("What time is it?"),
        P.audio_commit(),
    ]
    for event in events:
        assert conformance.check_client_event(event) == [], event
    assert events[0]["response"] == {"instructions": "Say it.", "tool_choice": "none", "conversation": "none"}
    assert events[1] == {"type": "response.create"}
